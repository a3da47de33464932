from btrsync.cli.main import entry

entry()
