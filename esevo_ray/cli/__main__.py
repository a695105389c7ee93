import sys

from esevo_ray.cli import main

sys.exit(main())
