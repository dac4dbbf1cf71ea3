# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The compiled per-record core of streamq. Its pure-Python twins must behave exactly alike.

Everything here runs once per record, so it is written to avoid what Python pays per
record: attribute lookups through dicts, temporary tuples and lists, frames.

- ``Message``: the record handed to handlers (twin: ``streamq.message._MessagePy``).
- ``kafka_messages``: confluent-kafka records to ``Message`` objects in one C loop.
- ``Dispatcher``: split a batch by partition and by key lane (twin: ``streamq.dispatch``).
- ``PartitionOffsets``: the offset tracker of one partition, on a C array of the offsets in
  flight (twin: ``streamq.offsets._PartitionOffsetsPy``); ``Span`` and ``span_of``: what a
  partition's lane finished, told to it without the records (twins in ``streamq.offsets``).
- ``murmur2`` and ``partition_for_key``: Kafka's partitioner, which the Redis and memory
  producers run per keyed record (twins in ``streamq.murmur2``).
- ``outputs_of``: a handler's result as the records it produces, for the usual result (twin
  in ``streamq.pipeline``).
- ``Acks`` and ``Relay``: delivery reports of handlers' outputs, per output on the producer's
  thread (twins in ``streamq.runtime.outbox`` and ``streamq.brokers.kafka.producer``).
- ``call_each`` and ``coordinate_keys``: the inline handler loop and the default dedup keys
  (twins in ``streamq.dispatch``); ``call_each_until`` and ``Lease``: the same loop, stopping
  at a deadline another thread moves.

"""

cimport cython
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy, memmove, memset

import orjson

from streamq._types import TopicPartition
from streamq.errors import DecodeError, SchemaError

cdef object _loads = orjson.loads


cdef inline list _as_list(object seq, str what):
    # list subclasses too (the worker's single-record Probe units): same layout, same reads.
    # Cython's ``list`` parameters accept exactly list, which Probe is not.
    if not isinstance(seq, list):
        raise TypeError(f"{what} must be a list, got {type(seq).__name__}")
    return <list>seq
cdef object _JSONDecodeError = orjson.JSONDecodeError


# -- Message ------------------------------------------------------------------------------------


# Not tracked by the cyclic GC: its fields are str, int, bytes and the broker's header list,
# which cannot lead back to the record. Tens of thousands of records are in flight at any
# time; tracked, they made every full collection walk all of them (about 1 us per record
# at 100k in flight, measured with `streamq bench`).
@cython.final
@cython.no_gc
@cython.freelist(2048)
cdef class Message:
    """One record, as a handler sees it.

    Backends build one per record on the hot path, so construction only stores references:
    nothing is decoded or copied until asked (``.headers``, ``.json()``).

    Attributes:
        topic: The topic (or, on Redis, the logical topic of the partition stream).
        partition: Partition number.
        offset: Kafka offset; on Redis a monotonic sequence derived from the stream ID.
        key: Raw key bytes, or None.
        value: Raw payload bytes, or None for a tombstone.
        timestamp: Milliseconds since the epoch, as the broker recorded it.
        attempt: 1 on first delivery to the handler, incremented by each in-place retry.
        raw_headers: Headers as (name, bytes) pairs in broker order, duplicates kept.
    """

    cdef public object topic
    cdef public object partition
    # C integers: the offset tracker reads them without a Python int, and a record costs two
    # fewer allocations (a Python int is made only when something asks for the attribute)
    cdef public int64_t offset
    cdef public object key
    cdef public object value
    cdef public object raw_headers
    cdef public int64_t timestamp
    cdef public object attempt
    cdef object _headers

    def __init__(self, topic, partition, offset, key, value, raw_headers=None, timestamp=-1):
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.raw_headers = raw_headers
        self.timestamp = timestamp
        self.attempt = 1
        self._headers = None

    @property
    def headers(self):
        """Headers as a dict; with duplicate names the last one wins (see ``raw_headers``)."""
        if self._headers is None:
            self._headers = dict(self.raw_headers) if self.raw_headers else {}
        return self._headers

    @property
    def tp(self):
        return TopicPartition(self.topic, self.partition)

    def json(self):
        """Decode the payload with orjson (no validation)."""
        if self.value is None:
            raise ValueError("tombstone record: value is None")
        return _loads(self.value)

    def __repr__(self):
        return (
            f"Message({self.topic!r}, partition={self.partition}, offset={self.offset}, "
            f"key={self.key!r}, value={_preview(self.value)}, attempt={self.attempt})"
        )

    def __reduce__(self):
        # Process-pool executors ship records to other processes; the attempt travels too.
        return (_rebuild, (self.topic, self.partition, self.offset, self.key, self.value,
                           self.raw_headers, self.timestamp, self.attempt))


def _rebuild(topic, partition, offset, key, value, raw_headers, timestamp, attempt):
    cdef Message m = Message(topic, partition, offset, key, value, raw_headers, timestamp)
    m.attempt = attempt
    return m


cdef str _preview(object value, Py_ssize_t limit=60):
    if value is None:
        return "None"
    return repr(value[:limit] + b"..." if len(value) > limit else value)


cdef inline Message _make(object topic, object partition, int64_t offset, object key,
                          object value, object raw_headers, int64_t timestamp):
    cdef Message m = Message.__new__(Message)
    m.topic = topic
    m.partition = partition
    m.offset = offset
    m.key = key
    m.value = value
    m.raw_headers = raw_headers
    m.timestamp = timestamp
    m.attempt = 1
    m._headers = None
    return m


# confluent-kafka's Message object, as its C source lays it out (confluent_kafka.h). Reading
# the fields saves eight method calls per record. The prefix below is the same in 2.2 (size
# 112) and 2.16 (size 120, one field appended). ``bind_confluent`` accepts only those sizes
# and then checks every field it reads on a probe record; with any other confluent-kafka the
# method calls stay.
cdef extern from *:
    """
    typedef struct {
        PyObject_HEAD
        PyObject *topic;
        PyObject *value;
        PyObject *key;
        PyObject *headers;
        void *c_headers;
        PyObject *error;
        int32_t partition;
        int64_t offset;
        int32_t leader_epoch;
        int64_t timestamp;
        int tstype;
        int64_t latency;
    } streamq_ck_message;
    """
    ctypedef struct streamq_ck_message:
        PyObject* topic
        PyObject* value
        PyObject* key
        PyObject* headers
        void* c_headers
        PyObject* error
        int32_t partition
        int64_t offset
        int64_t timestamp

cdef object _ck_type = None
_KNOWN_SIZES = (112, 120)


def bind_confluent(object message_type):
    """Read confluent-kafka records by field if ``message_type`` is laid out as expected."""
    global _ck_type
    _ck_type = None
    if (<PyTypeObject*>message_type).tp_basicsize not in _KNOWN_SIZES:
        return False
    probe = message_type(
        topic="streamq-probe", partition=7, offset=123456789012, key=b"K", value=b"V",
        timestamp=(1, 987654321098), headers=[("h", b"1")],
    )
    cdef streamq_ck_message* p = <streamq_ck_message*><PyObject*>probe
    ok = (
        p.topic != NULL and <object>p.topic == "streamq-probe"
        and p.value != NULL and <object>p.value == b"V"
        and p.key != NULL and <object>p.key == b"K"
        and p.partition == 7 and p.offset == 123456789012 and p.timestamp == 987654321098
        and (p.error == NULL or <object>p.error is None)
        and (p.headers != NULL or p.c_headers != NULL)
    )
    if ok:
        _ck_type = message_type
    return ok


cdef inline object _obj(PyObject* p):
    return None if p == NULL else <object>p


def kafka_messages(object raw_in, object on_error):
    """confluent-kafka records to Messages; records carrying an error go to ``on_error``."""
    cdef list raw = _as_list(raw_in, "raw")
    cdef list out = []
    cdef object m, err, headers, topic
    cdef object last_topic = None
    cdef streamq_ck_message* p
    cdef object fast = _ck_type
    for m in raw:
        if type(m) is fast:
            p = <streamq_ck_message*><PyObject*>m
            if p.error != NULL and <object>p.error is not None:
                on_error(m.error())
                continue
            headers = m.headers() if p.headers != NULL or p.c_headers != NULL else None
            # confluent-kafka makes a new topic string per record: share one, so records in
            # flight hold one copy and later comparisons succeed on identity
            topic = _obj(p.topic)
            if topic == last_topic:
                topic = last_topic
            else:
                last_topic = topic
            out.append(_make(topic, p.partition, p.offset, _obj(p.key), _obj(p.value),
                             headers, p.timestamp))
            continue
        err = m.error()
        if err is not None:
            on_error(err)
            continue
        out.append(_make(m.topic(), m.partition(), m.offset(), m.key(), m.value(),
                         m.headers(), m.timestamp()[1]))
    return out


cdef bytes _F_VALUE = b"v"
cdef bytes _F_KEY = b"k"
cdef bytes _F_HEADERS = b"h"
cdef bytes _F_STAMP = b"t"


cdef int64_t _digits(const char* s, Py_ssize_t n, Py_ssize_t* pos) except? -1:
    cdef int64_t v = 0
    cdef Py_ssize_t i = pos[0]
    cdef Py_ssize_t start = i
    while i < n and 48 <= s[i] <= 57:
        v = v * 10 + (s[i] - 48)
        i += 1
    if i == start:
        raise ValueError("not a stream entry ID")
    pos[0] = i
    return v


def redis_messages(str topic, object partition, object entries_in, list delivered,
                   list trimmed, int seq_bits, object decode_headers):
    """Redis stream entries ``(id, fields)`` to Messages, in one C loop.

    The offset is the entry ID ``ms-seq`` as ``ms << seq_bits | seq``; the timestamp is the
    producer's (field ``t``), else the ID's milliseconds. Entries whose fields are gone
    (trimmed, then redelivered from the pending list) go to ``trimmed``; the offsets of the
    others to ``delivered``. ``fields`` is a dict, or the reply's own flat list
    ``[name, value, ...]``: the consumer reads XREADGROUP unparsed, since redis-py's
    per-entry dicts cost more than this whole loop.
    """
    cdef list entries = _as_list(entries_in, "entries")
    cdef list out = []
    cdef object entry_id, fields, stamp, hblob, key, value, name
    cdef list flat
    cdef const char* raw
    cdef Py_ssize_t n, pos, j
    cdef int64_t ms, seq, offset
    for entry in entries:
        entry_id, fields = entry
        if not fields:
            trimmed.append(entry_id)
            continue
        if isinstance(entry_id, str):
            entry_id = (<str>entry_id).encode()
        raw = <bytes>entry_id
        n = len(<bytes>entry_id)
        pos = 0
        ms = _digits(raw, n, &pos)
        seq = 0
        if pos < n and raw[pos] == 45:  # "-"
            pos += 1
            seq = _digits(raw, n, &pos)
        offset = (ms << seq_bits) | seq
        if type(fields) is dict:
            stamp = (<dict>fields).get(_F_STAMP)
            hblob = (<dict>fields).get(_F_HEADERS)
            key = (<dict>fields).get(_F_KEY)
            value = (<dict>fields).get(_F_VALUE)
        else:  # flat: the last of a name repeated wins, as in redis-py's dict
            flat = <list?>fields
            stamp = hblob = key = value = None
            for j in range(0, len(flat) - 1, 2):
                name = flat[j]
                if name == _F_VALUE:
                    value = flat[j + 1]
                elif name == _F_KEY:
                    key = flat[j + 1]
                elif name == _F_STAMP:
                    stamp = flat[j + 1]
                elif name == _F_HEADERS:
                    hblob = flat[j + 1]
        out.append(_make(
            topic, partition, offset, key, value,
            decode_headers(hblob) if hblob else None,
            int(stamp) if stamp is not None else ms,
        ))
        delivered.append(offset)
    return out


# -- Dispatcher ---------------------------------------------------------------------------------


@cython.final
cdef inline Py_ssize_t _key_lane(object key, Py_ssize_t lanes) except -1:
    # The one rule for which lane a key goes to: split_keys and busiest_key_lane must agree.
    return 0 if key is None else hash(key) % lanes


cdef class Dispatcher:
    """Split a polled batch into per-partition lists, and those into key lanes."""

    cpdef dict split(self, object batch_in):
        cdef list batch = _as_list(batch_in, "batch")
        cdef dict out = {}
        cdef list current = None
        cdef object topic = None
        cdef object m, t, tp, found
        cdef Py_ssize_t partition = -1
        cdef Py_ssize_t p
        for m in batch:
            t = (<Message?>m).topic
            p = (<Message>m).partition
            if p != partition or t != topic:
                topic = t
                partition = p
                tp = TopicPartition(t, p)
                found = out.get(tp)
                if found is None:
                    found = []
                    out[tp] = found
                current = <list>found
            current.append(m)
        return out

    cpdef dict split_keys(self, object msgs_in, Py_ssize_t lanes):
        """The records of each key lane, lanes in the order of their first record.

        The lists are found through a C array by lane number, not a dict: no int object
        and no hash lookup per record.
        """
        cdef list msgs = _as_list(msgs_in, "msgs")
        cdef dict out = {}
        cdef object m
        cdef list found
        cdef Py_ssize_t lane, i, seen = 0
        cdef PyObject** by_lane
        cdef Py_ssize_t* order
        if lanes <= 0:
            raise ValueError("lanes must be positive")
        by_lane = <PyObject**>PyMem_Calloc(lanes, sizeof(PyObject*))
        order = <Py_ssize_t*>PyMem_Malloc(lanes * sizeof(Py_ssize_t))
        if by_lane == NULL or order == NULL:
            PyMem_Free(by_lane)
            PyMem_Free(order)
            raise MemoryError()
        try:
            for m in msgs:
                lane = _key_lane((<Message?>m).key, lanes)
                if by_lane[lane] == NULL:
                    found = [m]
                    Py_INCREF(found)  # the array's reference, handed to the dict below
                    by_lane[lane] = <PyObject*>found
                    order[seen] = lane
                    seen += 1
                else:
                    (<list>by_lane[lane]).append(m)
            for i in range(seen):
                out[order[i]] = <list>by_lane[order[i]]
        finally:
            for i in range(seen):
                Py_DECREF(<object>by_lane[order[i]])
            PyMem_Free(by_lane)
            PyMem_Free(order)
        return out

    cpdef Py_ssize_t busiest_key_lane(self, object msgs_in, Py_ssize_t lanes) except -1:
        """How many records the key lane with the most of them has, without splitting.

        The shared lane of a partition asks this per unit: with no key lane busy and no
        key's burst, the unit stays whole, and the lists ``split_keys`` builds (one per
        lane, up to 256 per unit) are never made.
        """
        cdef list msgs = _as_list(msgs_in, "msgs")
        cdef Py_ssize_t lane, most = 0
        cdef Py_ssize_t* counts
        if lanes <= 0:
            raise ValueError("lanes must be positive")
        counts = <Py_ssize_t*>PyMem_Calloc(lanes, sizeof(Py_ssize_t))
        if counts == NULL:
            raise MemoryError()
        try:
            for m in msgs:
                lane = _key_lane((<Message?>m).key, lanes)
                counts[lane] += 1
                if counts[lane] > most:
                    most = counts[lane]
        finally:
            PyMem_Free(counts)
        return most


# -- the inline handler loop and dedup keys -------------------------------------------------


@cython.final
cdef class JsonDecoder:
    """orjson plus a type check, for payload types JSON itself guarantees (dict, list, Any)."""

    cdef object kind
    cdef object describe

    def __init__(self, kind, describe):
        self.kind = kind  # dict, list, or None for anything
        self.describe = describe  # obj -> the SchemaError message

    cdef object decode(self, object value):
        if value is None:
            raise DecodeError("null value (tombstone) where a payload was expected")
        try:
            obj = _loads(value)
        except _JSONDecodeError as exc:
            raise DecodeError(f"invalid JSON: {exc}") from None
        if self.kind is not None and type(obj) is not self.kind:
            raise SchemaError(self.describe(obj))
        return obj

    def __call__(self, value):
        return self.decode(value)


cdef bint _find(const char* s, Py_ssize_t n, char first, const char* word, Py_ssize_t k):
    cdef const char* p = s
    cdef const char* end = s + n
    while p < end:
        p = <const char*>memchr(p, first, end - p)
        if p == NULL:
            return False
        if end - p >= k and memcmp(p, word, k) == 0:
            return True
        p += 1
    return False


cdef inline uint32_t _murmur2(const unsigned char* p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i, end = n - (n & 3)
    cdef uint32_t m = 0x5BD1E995
    cdef uint32_t h = 0x9747B28C ^ <uint32_t>n
    cdef uint32_t k
    for i in range(0, end, 4):
        k = p[i] | (<uint32_t>p[i + 1] << 8) | (<uint32_t>p[i + 2] << 16) | (<uint32_t>p[i + 3] << 24)
        k *= m
        k ^= k >> 24
        k *= m
        h = (h * m) ^ k
    i = n & 3
    if i == 3:
        h ^= <uint32_t>p[end + 2] << 16
    if i >= 2:
        h ^= <uint32_t>p[end + 1] << 8
    if i >= 1:
        h ^= p[end]
        h *= m
    h ^= h >> 13
    h *= m
    h ^= h >> 15
    return h


def murmur2(bytes data not None):
    """32-bit murmur2 of ``data`` with Kafka's seed (uint32 arithmetic wraps as Java's int)."""
    return _murmur2(<const unsigned char*><const char*>data, len(data))


def partition_for_key(bytes key not None, Py_ssize_t partitions):
    """The partition Kafka's default partitioner picks for ``key``."""
    cdef Py_ssize_t h = _murmur2(<const unsigned char*><const char*>key, len(key)) & 0x7FFFFFFF
    return h % partitions


def has_nonfinite(bytes value):
    """Whether ``NaN`` or ``Infinity`` occurs anywhere in the payload (two memchr scans).

    pydantic-core's JSON parser takes those literals and orjson refuses them: payloads that
    contain them take the orjson path, so both payload kinds speak one JSON dialect.
    """
    cdef const char* s = value
    cdef Py_ssize_t n = len(value)
    return _find(s, n, 78, b"NaN", 3) or _find(s, n, 73, b"Infinity", 8)


# Handler signatures the invoker calls without a Python frame of its own.
cdef enum:
    SHAPE_PAYLOAD = 1
    SHAPE_PAYLOAD_MSG = 2
    SHAPE_MSG_PAYLOAD = 3


@cython.final
cdef class Invoker:
    """A handler call specialised to its signature: fn(payload), fn(payload, m), fn(m, payload).

    Saves the closure's frame per record, and calls a ``JsonDecoder`` at C level.
    """

    cdef readonly object fn
    cdef readonly object decode
    cdef readonly int shape
    cdef JsonDecoder plain

    def __init__(self, fn, decode, int shape):
        if shape not in (SHAPE_PAYLOAD, SHAPE_PAYLOAD_MSG, SHAPE_MSG_PAYLOAD):
            raise ValueError(f"unknown handler shape {shape}")
        self.fn = fn
        self.decode = decode
        self.shape = shape
        self.plain = decode if type(decode) is JsonDecoder else None

    cdef inline object call(self, object m):
        cdef object value = (<Message>m).value if type(m) is Message else m.value
        cdef object payload
        if self.plain is not None:
            payload = self.plain.decode(value)
        else:
            payload = self.decode(value)
        if self.shape == SHAPE_PAYLOAD:
            return self.fn(payload)
        if self.shape == SHAPE_PAYLOAD_MSG:
            return self.fn(payload, m)
        return self.fn(m, payload)

    def __call__(self, m):
        return self.call(m)


def make_invoker(object fn, object decode, int shape):
    """The per-record call for a handler of one of the shapes above (0: ``fn`` itself)."""
    if shape == 0:
        return fn
    return Invoker(fn, decode, shape)


def call_each(object invoke, object unit_in, Py_ssize_t i, Py_ssize_t end, list failed):
    """Call ``invoke`` on ``unit[i:end]``; on an exception append it to ``failed`` and stop.

    Returns the index reached: ``end``, or the index of the record that raised.
    """
    cdef list unit = _as_list(unit_in, "unit")
    cdef Py_ssize_t n = len(unit)
    cdef Invoker inv
    if end > n:
        end = n
    try:
        if type(invoke) is Invoker:
            inv = <Invoker>invoke
            while i < end:
                inv.call(unit[i])
                i += 1
        else:
            while i < end:
                invoke(unit[i])
                i += 1
    except BaseException as exc:
        failed.append(exc)
    return i


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    ctypedef int clockid_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk_id, timespec* tp)
    int clock_getres(clockid_t clk_id, timespec* res)
    clockid_t CLOCK_MONOTONIC
    clockid_t CLOCK_MONOTONIC_COARSE


cdef inline double _monotonic() noexcept nogil:
    # time.monotonic() reads the same clock on Linux, so deadlines set in Python compare.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


# The same clock as of the last timer tick: never ahead of CLOCK_MONOTONIC, and behind it by
# about its resolution (one tick) while this thread runs. A fifth of the cost per read (vDSO):
# the lease check below reads a clock before every record, and the precise read was 2% of a
# record's CPU on Kafka (perf, `streamq bench`). Two ticks are allowed for the lag; closer to
# the deadline than that the precise clock decides, so the check means what it always did.
cdef double _COARSE_LAG = -1.0  # seconds; -1: not available here


cdef inline double _coarse() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


def _probe_coarse():
    global _COARSE_LAG
    cdef timespec ts
    if clock_getres(CLOCK_MONOTONIC_COARSE, &ts) == 0 and ts.tv_sec == 0 and ts.tv_nsec <= 20000000:
        _COARSE_LAG = 2.0 * <double>ts.tv_nsec * 1e-9
    return _COARSE_LAG


_probe_coarse()


cdef inline bint _before(double deadline) noexcept nogil:
    """Whether CLOCK_MONOTONIC is before ``deadline``: the coarse clock decides far from it."""
    if _COARSE_LAG >= 0.0 and _coarse() + _COARSE_LAG < deadline:
        return True
    return _monotonic() < deadline


@cython.final
@cython.freelist(64)
cdef class Lease:
    """Until when this member may start handlers of a partition (twin: ``_LeasePy``).

    Redis: the partition lease, renewed by the poll thread. Kafka: the member's liveness,
    renewed while the process runs, so a member frozen past its session starts nothing on
    waking until the group confirms it still owns its partitions.
    """

    cdef public object token
    cdef public double deadline

    def __init__(self, object token=None, double deadline=float("inf")):
        self.token = token
        self.deadline = deadline

    def __repr__(self):
        return f"Lease(token={self.token!r}, deadline={self.deadline!r})"


def call_each_until(object invoke, object unit_in, Py_ssize_t i, Py_ssize_t end, list failed,
                    Lease lease):
    """``call_each``, starting no record once the clock has passed ``lease.deadline``.

    Returns the index reached: ``end``, the record that raised, or the first not started.
    The deadline is read before every record: another thread may move it either way.
    """
    cdef list unit = _as_list(unit_in, "unit")
    cdef Py_ssize_t n = len(unit)
    cdef Invoker inv
    if end > n:
        end = n
    try:
        if type(invoke) is Invoker:
            inv = <Invoker>invoke
            while i < end and _before(lease.deadline):
                inv.call(unit[i])
                i += 1
        else:
            while i < end and _before(lease.deadline):
                invoke(unit[i])
                i += 1
    except BaseException as exc:
        failed.append(exc)
    return i


cdef extern from "Python.h":
    object PyUnicode_FromStringAndSize(const char* u, Py_ssize_t size)
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void* PyUnicode_DATA(object o)


cdef inline Py_ssize_t _decimal(char* out, int64_t v) noexcept:
    """``v`` in decimal at ``out`` (at most 20 bytes); its length."""
    cdef char digits[20]
    cdef Py_ssize_t n = 0, k = 0
    cdef uint64_t u = <uint64_t>v
    if v < 0:
        out[0] = 45  # "-"
        k = 1
        u = <uint64_t>0 - u
    while True:
        digits[n] = <char>(48 + u % 10)
        n += 1
        u //= 10
        if u == 0:
            break
    while n:
        n -= 1
        out[k] = digits[n]
        k += 1
    return k


def coordinate_keys(object unit_in):
    """Dedup keys ``topic:partition:offset`` for a unit (``streamq.dedup.coordinates``).

    A unit is mostly one partition: the ``topic:partition:`` prefix is encoded once per run
    and each key is written into a C buffer, its digits by hand (a ``snprintf`` parsed its
    format per record: 106 ns a key in ``benchmarks/micro_dispatch.py``). An ASCII topic (all
    of them in practice) is copied into the string as it is made, with no UTF-8 decoding.
    """
    cdef list unit = _as_list(unit_in, "unit")
    cdef list out = []
    cdef Message m
    cdef object topic = None
    cdef object partition = None
    cdef object key
    cdef bytes prefix = b""
    cdef char buf[512]
    cdef Py_ssize_t plen = 0, n
    cdef bint ascii = True
    for x in unit:
        m = <Message?>x
        # identity first: a batch's records share their topic string and partition number
        if (m.partition is not partition and m.partition != partition) or (
            m.topic is not topic and m.topic != topic
        ):
            topic = m.topic
            partition = m.partition
            text = f"{topic}:{partition}:"
            ascii = text.isascii()
            prefix = text.encode()
            plen = len(prefix)
            if plen <= 480:
                memcpy(buf, <const char*>prefix, plen)
        if plen > 480:  # absurd topic names: the plain way
            out.append(f"{m.topic}:{m.partition}:{m.offset}")
            continue
        n = plen + _decimal(buf + plen, m.offset)
        if ascii:
            key = PyUnicode_New(n, 127)
            memcpy(PyUnicode_DATA(key), buf, n)
        else:
            key = PyUnicode_FromStringAndSize(buf, n)
        out.append(key)
    return out


# -- handlers' outputs -------------------------------------------------------------------------

cdef object _out_type = None  # streamq.Out, streamq.pipeline.Output, orjson.dumps, the twin
cdef object _output_type = None
cdef object _dumps = None
cdef object _outputs_slow = None


def bind_outputs(object out_type, object output_type, object dumps, object slow):
    """Give ``outputs_of`` what it builds from (``streamq.pipeline`` calls this at import)."""
    global _out_type, _output_type, _dumps, _outputs_slow
    _out_type, _output_type, _dumps, _outputs_slow = out_type, output_type, dumps, slow


def outputs_of(object result, object input_key, object allowed=None):
    """``streamq.pipeline.outputs_of`` without a Python frame for the usual result: one
    ``Out`` to a str topic, its value a dict, list, bytes or None, its key bytes or None, no
    headers and no delay. Anything else, and every error, is the twin's to handle (it raises
    what users see)."""
    if type(result) is not _out_type:
        return _outputs_slow(result, input_key, allowed)
    cdef tuple out = <tuple>result
    cdef object topic = out[0], value = out[1], key = out[2], data
    if out[3] is not None or out[4] is not None or type(topic) is not str or not topic:
        return _outputs_slow(result, input_key, allowed)
    if allowed is not None and topic not in allowed:
        return _outputs_slow(result, input_key, allowed)
    if key is None:
        key = input_key
    elif type(key) is not bytes:
        return _outputs_slow(result, input_key, allowed)
    cdef type kind = type(value)
    if kind is dict or kind is list:
        try:
            data = _dumps(value)
        except TypeError:
            return _outputs_slow(result, input_key, allowed)
    elif kind is bytes or value is None:
        data = value
    else:
        return _outputs_slow(result, input_key, allowed)
    # the NamedTuple's own __new__ is a Python function: tuple's, as Output._make does
    cdef tuple args = ((topic, data, key, None, None, None),)
    return [(<PyTypeObject*>tuple).tp_new(_output_type, <PyObject*>args, NULL)]


# -- delivery reports of handlers' outputs --------------------------------------------------------


@cython.final
cdef class Acks:
    """One outbox generation's outputs and their delivery reports, counted without a lock.

    Lanes ``add`` what they publish; the producer's thread calls it once per output:
    ``(None, None)`` when acknowledged, ``(error, output)`` when refused. Each runs in C
    holding the GIL, so each increment is atomic: no lock, and no Python frame.
    """

    cdef readonly Py_ssize_t sent
    cdef readonly Py_ssize_t acked
    cdef readonly object refused

    def __init__(self, object refused):
        self.sent = 0
        self.acked = 0
        self.refused = refused

    def add(self, Py_ssize_t n):
        self.sent += n

    def __call__(self, object exc, object out):
        if exc is None:
            self.acked += 1
        else:
            self.refused.append((exc, out))


@cython.final
cdef class Relay:
    """A client's per-record delivery callback ``(err, msg)``: ``delivered(None, None)`` on
    success, with no Python frame; ``refuse(err, msg)`` (Python: it translates) on failure."""

    cdef object _delivered
    cdef object _refuse

    def __init__(self, object delivered, object refuse):
        self._delivered = delivered
        self._refuse = refuse

    def __call__(self, object err, object msg):
        if err is None:
            self._delivered(None, None)
        else:
            self._refuse(err, msg)


# -- the offset tracker of one partition --------------------------------------------------------


@cython.final
@cython.freelist(64)
cdef class Span:
    """What a lane finished, as the offset tracker needs it: first and last offset, how many.

    Built on the event loop's thread (``span_of``) for a run of records that were tracked
    next to each other, so the poll thread completes them without reading each record.
    """

    cdef readonly int64_t first
    cdef readonly int64_t last
    cdef readonly Py_ssize_t count
    cdef readonly Py_ssize_t nbytes

    def __init__(self, int64_t first, int64_t last, Py_ssize_t count, Py_ssize_t nbytes):
        self.first = first
        self.last = last
        self.count = count
        self.nbytes = nbytes

    def __len__(self):
        return self.count

    def __repr__(self):
        return f"Span({self.first}, {self.last}, count={self.count}, nbytes={self.nbytes})"


def span_of(object msgs_in):
    """The ``Span`` of records that were tracked next to each other, in log order."""
    cdef list msgs = _as_list(msgs_in, "msgs")
    cdef Py_ssize_t n = len(msgs)
    cdef Py_ssize_t nbytes = 0
    cdef Message m
    cdef Span span = Span.__new__(Span)
    for x in msgs:
        m = <Message?>x
        if m.value is not None:
            nbytes += len(m.value)
    span.count = n
    span.nbytes = nbytes
    span.first = (<Message?>msgs[0]).offset if n else 0
    span.last = (<Message?>msgs[n - 1]).offset if n else -1
    return span



@cython.final
cdef class PartitionOffsets:
    """Tracked offsets of one partition during one ownership epoch.

    The offsets in flight sit in one sorted C array (they arrive in log order), with a done
    flag each: completing the first one advances the head past every finished one behind
    it, completing a later one sets its flag (found by binary search). Memory follows the
    number in flight, whatever the distance between offsets.
    """

    cdef int64_t* _offs
    cdef uint8_t* _flags
    cdef Py_ssize_t _head, _len, _cap, _ndone
    cdef int64_t _last
    cdef Py_ssize_t _bytes
    cdef public object epoch
    cdef public object committed

    def __cinit__(self, epoch=0):
        self._cap = 64
        self._offs = <int64_t*>PyMem_Malloc(self._cap * sizeof(int64_t))
        self._flags = <uint8_t*>PyMem_Malloc(self._cap * sizeof(uint8_t))
        if self._offs is NULL or self._flags is NULL:
            raise MemoryError()
        self._head = self._len = self._ndone = 0
        self._last = -1
        self._bytes = 0

    def __init__(self, epoch=0):
        self.epoch = epoch
        self.committed = None

    def __dealloc__(self):
        PyMem_Free(self._offs)
        PyMem_Free(self._flags)

    cdef int _reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t need = self._len + extra
        cdef Py_ssize_t cap
        cdef void* p
        if self._head + need <= self._cap:
            return 0
        if self._head and need <= self._cap:  # room at the front: slide down
            memmove(self._offs, self._offs + self._head, self._len * sizeof(int64_t))
            memmove(self._flags, self._flags + self._head, self._len * sizeof(uint8_t))
            self._head = 0
            return 0
        if self._head:
            memmove(self._offs, self._offs + self._head, self._len * sizeof(int64_t))
            memmove(self._flags, self._flags + self._head, self._len * sizeof(uint8_t))
            self._head = 0
        cap = self._cap
        while cap < need:
            cap *= 2
        p = PyMem_Realloc(self._offs, cap * sizeof(int64_t))
        if p is NULL:
            raise MemoryError()
        self._offs = <int64_t*>p
        p = PyMem_Realloc(self._flags, cap * sizeof(uint8_t))
        if p is NULL:
            raise MemoryError()
        self._flags = <uint8_t*>p
        self._cap = cap
        return 0

    cdef void _shrink(self):
        # After a burst drained: give the memory back so idle partitions stay small.
        if self._len == 0:
            self._head = 0
            if self._cap > 4096:
                self._offs = <int64_t*>PyMem_Realloc(self._offs, 64 * sizeof(int64_t))
                self._flags = <uint8_t*>PyMem_Realloc(self._flags, 64 * sizeof(uint8_t))
                self._cap = 64

    cdef int _begin(self, int64_t first) except -1:
        if first <= self._last:
            if self._len:
                raise ValueError(
                    f"offset {first} tracked after {self._last} while records are in flight"
                )
            self._ndone = 0  # a rewind (seek back) with nothing in flight
        return 0

    cdef inline void _push(self, int64_t o):
        cdef Py_ssize_t at = self._head + self._len
        self._offs[at] = o
        self._flags[at] = 0
        self._len += 1

    def track(self, object offsets_in, Py_ssize_t nbytes=0):
        """Record dispatched offsets; they must increase, as a partition's log does."""
        cdef list offsets = _as_list(offsets_in, "offsets")
        cdef Py_ssize_t n = len(offsets)
        cdef Py_ssize_t i
        if n == 0:
            return
        self._begin(offsets[0])
        self._reserve(n)
        for i in range(n):
            self._push(offsets[i])
        self._last = offsets[n - 1]
        self._bytes += nbytes

    def track_messages(self, object msgs_in):
        """``track`` for records; returns their payload bytes."""
        cdef list msgs = _as_list(msgs_in, "msgs")
        cdef Py_ssize_t n = len(msgs)
        cdef Py_ssize_t i
        cdef Py_ssize_t nbytes = 0
        cdef Message m
        if n == 0:
            return 0
        self._begin((<Message?>msgs[0]).offset)
        self._reserve(n)
        for i in range(n):
            m = <Message?>msgs[i]
            self._push(m.offset)
            if m.value is not None:
                nbytes += len(m.value)
        self._last = (<Message>msgs[n - 1]).offset
        self._bytes += nbytes
        return nbytes

    cdef void _advance(self, Py_ssize_t by):
        # the first ``by`` entries are done: the head moves past them and past every entry
        # behind them that finished out of order
        self._head += by
        self._len -= by
        while self._len and self._flags[self._head]:
            self._head += 1
            self._len -= 1
            self._ndone -= 1
        if self._len == 0:
            self._shrink()

    cdef Py_ssize_t _above_head(self, int64_t offset):
        # index of the first entry after the head at or above ``offset`` (binary search)
        cdef Py_ssize_t lo = self._head + 1
        cdef Py_ssize_t hi = self._head + self._len
        cdef Py_ssize_t mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._offs[mid] < offset:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef bint _done(self, int64_t offset):
        cdef Py_ssize_t lo, end
        cdef int64_t* offs = self._offs
        if self._len == 0 or offset < offs[self._head]:
            return False
        if offset == offs[self._head]:
            self._advance(1)
            return True
        if offset > self._last:
            return False
        lo = self._above_head(offset)
        end = self._head + self._len
        if lo < end and offs[lo] == offset and not self._flags[lo]:
            self._flags[lo] = 1
            self._ndone += 1
            return True
        return False

    def done(self, int64_t offset):
        """Mark one offset done; False if it was not in flight (duplicate, stale, a gap)."""
        return self._done(offset)

    def complete_messages(self, object msgs_in):
        """``done`` for records; returns (records newly done, their payload bytes)."""
        cdef list msgs = _as_list(msgs_in, "msgs")
        cdef Py_ssize_t records = 0
        cdef Py_ssize_t nbytes = 0
        cdef Message m
        for x in msgs:
            m = <Message?>x
            if self._done(m.offset):
                records += 1
                if m.value is not None:
                    nbytes += len(m.value)
        self._bytes -= nbytes
        return records, nbytes

    def complete_span(self, Span span):
        """``complete_messages`` for a run of records tracked next to each other.

        The poll thread then never touches the records a lane finished: they were last used
        on the event loop's thread, and are freed there. A span must name whole tracked
        entries (the lane's records, in order, none finished before); anything else is a
        bug in whoever built it, and raises rather than commit past a record not done.
        """
        cdef Py_ssize_t count = span.count
        cdef Py_ssize_t i, end
        cdef int64_t* offs = self._offs
        if count == 0 or self._len == 0 or span.last < offs[self._head]:
            return 0, 0  # nothing, or behind the position: an epoch's leftovers
        end = self._head + self._len
        i = self._head if span.first == offs[self._head] else self._above_head(span.first)
        if i + count > end or offs[i] != span.first or offs[i + count - 1] != span.last:
            raise RuntimeError(
                f"span {span.first}..{span.last} of {count} records is not a run of tracked "
                f"offsets in flight (from {offs[self._head]}, {self._len} held)"
            )
        if memchr(self._flags + i, 1, count) != NULL:
            raise RuntimeError(f"span {span.first}..{span.last} has records finished before")
        if i == self._head:
            self._advance(count)
        else:
            memset(self._flags + i, 1, count)
            self._ndone += count
        self._bytes -= span.nbytes
        return count, span.nbytes

    def skip_to(self, int64_t offset):
        """With nothing in flight, move the position to where the client is (``offset``).

        What lies between held no records for us: Kafka's transaction markers.
        """
        if self._len == 0 and offset - 1 > self._last:
            self._last = offset - 1

    @property
    def position(self):
        """First offset not yet done; None when nothing was ever tracked."""
        if self._len:
            return self._offs[self._head]
        return self._last + 1 if self._last >= 0 else None

    @property
    def in_flight(self):
        return self._len - self._ndone

    @property
    def held(self):
        """Offsets held in memory: the in-flight window, never the offset distance."""
        return self._len

    @property
    def last(self):
        return self._last

    @property
    def bytes(self):
        return self._bytes


from posix.unistd cimport _exit, getppid, usleep


def watch_parent(int parent, double grace_s, int code):
    """Exit with ``code`` once ``parent`` has been gone for ``grace_s`` seconds.

    Runs in a thread of its own and never takes the GIL back: a worker whose Python threads
    are all frozen (a C call that holds the GIL forever) cannot act on the SIGTERM that
    PR_SET_PDEATHSIG delivers when its supervisor dies, and would outlive it holding its
    partitions. This loop ends it anyway, ``grace_s`` after the supervisor died.
    """
    cdef double gone_at = -1.0
    with nogil:
        while True:
            if getppid() != parent:
                if gone_at < 0:
                    gone_at = _monotonic()
                elif _monotonic() - gone_at >= grace_s:
                    _exit(code)
            usleep(200000)
