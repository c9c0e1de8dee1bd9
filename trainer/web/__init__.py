"""``twinlock web``: the household page on the host (never on a door, which opens no port).

A thin layer over the same household functions the CLI calls (enrolment gate, activity store,
labels, visitor groups, doors). Security lives in :mod:`.auth`; listening and TLS in
:mod:`.server`; routes and pages in :mod:`.app`.
"""
