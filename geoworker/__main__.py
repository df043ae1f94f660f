from geoworker.cli import main

raise SystemExit(main())
