from dupwatch.cli.main import main

raise SystemExit(main())
