import sys

from ..console import evaluate

sys.exit(evaluate())
