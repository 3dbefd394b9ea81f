"""`minivlm.scripts`: the command-line programs, each a thin `main()` over the packages; installed as the `minivlm-*` console commands."""
