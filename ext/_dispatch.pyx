# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of streamq.dispatch._DispatcherPy; behaviour must match it exactly.

Per-record work only: read topic, partition and key, append to the unit's list. The dict
lookup happens once per run of one partition, not once per record.
"""

cimport cython

from streamq.message import TopicPartition


@cython.final
cdef class Dispatcher:
    cpdef dict split(self, list batch):
        cdef dict out = {}
        cdef list current = None
        cdef object topic = None
        cdef object m, t, tp, found
        cdef Py_ssize_t partition = -1
        cdef Py_ssize_t p
        for m in batch:
            t = m.topic
            p = m.partition
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

    cpdef dict split_keys(self, list msgs, Py_ssize_t lanes):
        cdef dict out = {}
        cdef object m, key, found
        cdef Py_ssize_t lane
        if lanes <= 0:
            raise ValueError("lanes must be positive")
        for m in msgs:
            key = m.key
            lane = 0 if key is None else hash(key) % lanes
            found = out.get(lane)
            if found is None:
                found = []
                out[lane] = found
            (<list>found).append(m)
        return out
