"""``python -m tsmcli``: the same CLI as ``tsm`` (torchrun needs the module form)."""

from tsmcli.cli import main

if __name__ == "__main__":
    main()
