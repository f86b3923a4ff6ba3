"""Entry point: ``python -m r1lightning {fit,validate,test,predict} --config CONFIG.yaml``."""

from r1lightning.cli import main

if __name__ == "__main__":
    main()
