"""A resident search process on a private Unix socket, so a CLI search does not pay for importing
torch and loading the model each time (issue 14: a cold CLI search under 2 s).

`folder` and `client` import only the standard library (and platformdirs): the CLI reaches a running
server without importing torch. `server` loads the sessions; it never listens on TCP.
"""
