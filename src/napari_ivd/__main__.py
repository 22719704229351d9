"""``python -m napari_ivd`` runs the command line."""

import sys

from napari_ivd.cli import main

sys.exit(main())
