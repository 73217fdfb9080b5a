"""``python -m tpemu``: the same CLI as the ``tpemu`` console script."""

from tpemu.cli import main

raise SystemExit(main())
