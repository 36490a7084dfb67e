"""The orchestration of runs: building them from a request, running them one after another
or through an executor, sweeps, locks on run folders, the leaderboard's planning and the
step-time measurements of ``perf``. Built on ``engine.core``; the command line calls it."""
