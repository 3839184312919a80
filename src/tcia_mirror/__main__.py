from tcia_mirror._entry import main

raise SystemExit(main())
