from edgehub.cli import main

raise SystemExit(main())
