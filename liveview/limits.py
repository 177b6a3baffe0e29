"""What clients may hold open on the live view (light to import: `jcm --help` shows them)."""

#: open event streams at most, in all and from one client address: each holds a queue of up to
#: 1,000 events and is offered every event of its site, so streams without limit would let one
#: client (a script, a page reloaded in a loop) grow the server's memory and CPU at will
MAX_STREAMS = 64
MAX_STREAMS_PER_ADDRESS = 8
