import sys

from bench.cli import main

if __name__ == "__main__":
    if sys.argv[1:2] == ["adopt"]:  # `python -m bench adopt …` is `python -m bench.adopt …`
        from bench.adopt import main as adopt_main

        sys.exit(adopt_main(sys.argv[2:]))
    sys.exit(main())
