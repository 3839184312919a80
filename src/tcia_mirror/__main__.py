from tcia_mirror.cli import main

raise SystemExit(main())
