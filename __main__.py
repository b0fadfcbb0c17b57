from dupwatch.streams.cli import main

raise SystemExit(main())
