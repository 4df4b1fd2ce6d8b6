"""`appion export`: a session's results in the files other programs read (RELION 3.1+ STAR files).

Importing this package stays light; the parser is appion.export.cli, the work appion.export.commands
(after appion.base.db.bootstrap()).
"""
