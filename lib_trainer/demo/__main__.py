import sys

from lib_trainer.demo.run import main

sys.exit(main())
