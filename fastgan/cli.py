"""The `fastgan` command line."""
import argparse
import json

import fastgan


def _info(args):
    print(json.dumps({"fastgan": fastgan.__version__, **fastgan.backend_info()}, indent=2))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="fastgan", description=fastgan.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=fastgan.__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="show the version and which kernels are active").set_defaults(
        run=_info)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.run(args)
