"""Tables and the leaderboard page built from result files.

``load`` reads result JSON files, ``extract`` pulls scores out of them (tolerating tasks that are
still growing their score keys), ``tables`` renders the paper's four tables, ``board`` the ranked
leaderboard tables, ``plots`` the PNG figures and ``page`` writes ``leaderboard/README.md``.
"""
