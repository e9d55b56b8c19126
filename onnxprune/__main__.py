from onnxprune.cli.main import main

raise SystemExit(main())
