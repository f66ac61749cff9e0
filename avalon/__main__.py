from avalon.cli import main

raise SystemExit(main())
