from fastgan.cli import main

raise SystemExit(main())
