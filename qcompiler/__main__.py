from qcompiler.cli import main

raise SystemExit(main())
