from ris.cli import main

raise SystemExit(main())
