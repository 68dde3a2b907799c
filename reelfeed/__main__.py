from reelfeed.cli import main

raise SystemExit(main())
