"""python -m persona.testing.exports --people N --out DIR [--seed S]"""

import sys

from persona.testing.exports import main

sys.exit(main())
