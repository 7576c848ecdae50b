import sys

# python -m pixverve audit IMAGE | retry [-- snakemake ...] | artimuse-template --upstream CHECKOUT
if sys.argv[1:2] == ["retry"]:
    from .retry import main as retry

    sys.exit(retry(sys.argv[2:]))
if sys.argv[1:2] == ["artimuse-template"]:
    from .models.artimuse_upstream import main as template

    sys.exit(template(sys.argv[2:]))
from .audit import main  # noqa: E402

sys.exit(main())
