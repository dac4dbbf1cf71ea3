"""``streamq bench``: drain one pre-filled topic with the raw client loop and with streamq.

Both consumers do the same work per record (the ``--handler``) on the same records, in the
same run, alternating raw then streamq for ``--rounds`` rounds, each in a fresh consumer
group. The report is the ratio, so a noisy shared machine moves both sides together.

How one drain is measured:

- Each worker process counts into its slot of a shared-memory block, as a user's own code
  would count: the raw loop per batch (after the batch's work), streamq's handler per
  record in a local variable that a thread publishes every millisecond (``tally``). A
  monitor samples the slots every 2 ms: the drain starts when the first record is handled
  (the raw loop: when its first batch's work starts) and ends when all ``--messages`` are.
  Neither side pays more per record than its user would; streamq's count reaches the
  monitor up to a few milliseconds late (the publishing thread waits for the GIL), which
  counts against streamq.
- CPU seconds per million records: user plus system time of every worker process (from
  ``/proc``), across the drain window; this includes librdkafka's and redis-py's threads.
- RSS: each worker's resident size when its first record arrives, and its peak (VmHWM).
- End-to-end latency: after the backlog is drained, ``--latency-messages`` records are
  produced at ``--latency-rate`` per second while the consumer runs, and each is timed from
  its broker timestamp to its handler (millisecond resolution, the timestamps' own).

Kafka and Redis drains run in a fresh subprocess each (``python -m streamq.bench``), so a
drain's memory and CPU are its own. ``memory://`` lives in one process, so its drains run
in this one, one after the other.

``--transform`` makes each drain consume-transform-produce: one output per input, committed
as ``--guarantee`` says, and the drain ends when a reader sees every output.

The package, one concern per module: ``spec`` (the ``BenchSpec``), ``workloads`` (payloads,
the backlog, the per-record work), ``tally`` (the shared counters), ``raw`` (the client
libraries' own loops), ``raw_transform`` (their loops under ``--transform``), ``streamq_side``
(the streamq app), ``outputs`` (the visible outputs, counted), ``monitor`` (one drain,
measured), ``drain`` (one side's drain), ``run`` (the rounds), ``report`` (medians and the
ratio), and ``__main__`` (the drain subprocesses' entry points).
"""

from .run import run_bench
from .spec import BenchSpec, parse_handler
from .workloads import BenchRecord

__all__ = ["BenchRecord", "BenchSpec", "parse_handler", "run_bench"]
