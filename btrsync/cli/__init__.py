"""The command line: click commands that parse, call one ops function, and render."""
