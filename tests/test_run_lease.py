"""Run leases on S3 (moto): taken create-only, held by renewal, refused while alive, taken over once stale,
lost acknowledgements recognised, a holder that lost its lease cannot go on."""

import json
import socket
import time

import pytest

from driver.datasets.object_store import ObjectLocation
from driver.datasets.run_lease import LeaseHeld, LeaseLost, RunLease, lock_key


@pytest.fixture
def location(s3_url):
    return ObjectLocation(s3_url)


def _doc(location, run="r"):
    return json.loads(location.read(lock_key(run)))


def test_taken_held_and_given_back(location):
    with RunLease(location, "r", ttl_s=1.0) as lease:
        doc = _doc(location)
        assert doc["owner"] == lease.token and doc["host"] == socket.gethostname() and doc["ttl_s"] == 1.0
        first = doc["expires"]
        time.sleep(1.5)  # longer than the ttl: renewed meanwhile
        assert _doc(location)["expires"] > first
        lease.check()
    assert not location.exists(lock_key("r"))


def test_a_live_holder_keeps_it(location):
    with RunLease(location, "r", ttl_s=3.0):  # renewed every second; stale only after 4.5 s unchanged
        t0 = time.monotonic()
        with pytest.raises(LeaseHeld, match=rf"run 'r' is being ingested by {socket.gethostname()} pid \d+"):
            RunLease(location, "r", ttl_s=3.0, wait_s=2.0).acquire()
        assert time.monotonic() - t0 >= 2.0
    with RunLease(location, "r", ttl_s=1.0):  # given back: free at once
        pass


def test_a_dead_holders_lease_is_taken_over(location, caplog):
    dead = RunLease(location, "r", ttl_s=1.0).acquire()
    dead._stop.set()  # the holder's process "dies": no more renewals, no release
    dead._thread.join()
    t0 = time.monotonic()
    with RunLease(location, "r", ttl_s=1.0) as new:
        waited = time.monotonic() - t0
        assert _doc(location)["owner"] == new.token
    assert 1.0 <= waited < 30.0  # 1.5 ttl of watching it not change, plus polling
    assert "took over the stale lock" in caplog.text
    with pytest.raises(LeaseLost, match="lost the lease on run 'r'"):
        dead.check()


def test_long_dead_and_unreadable_leases_are_taken_at_once(location):
    old = {"owner": "x", "host": "gone", "pid": 1, "ttl_s": 60.0, "expires": time.time() - 3600}
    location.write(lock_key("r"), json.dumps(old).encode())
    location.write(lock_key("q"), b"\x00 not json")
    t0 = time.monotonic()
    with RunLease(location, "r", ttl_s=60.0), RunLease(location, "q", ttl_s=60.0):
        pass
    assert time.monotonic() - t0 < 10.0


def test_our_own_create_whose_answer_was_lost(location):
    lease = RunLease(location, "r", ttl_s=1.0)
    # the create-only write landed, but its answer was lost and the retry found the object: it is ours
    location.write(lock_key("r"), json.dumps({"owner": lease.token, "ttl_s": 1.0, "expires": time.time() + 1}).encode())
    lease.acquire()
    try:
        lease.check()
    finally:
        lease.release()
    assert not location.exists(lock_key("r"))


def test_a_holder_taken_over_must_stop(location):
    lease = RunLease(location, "r", ttl_s=1.0).acquire()
    raw, etag = location.read_versioned(lock_key("r"))
    location.write(lock_key("r"), json.dumps({"owner": "other", "host": "h2", "pid": 2, "ttl_s": 1.0,
                                               "expires": time.time() + 60}).encode(), mode={"e_tag": etag})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not lease._lost:
        time.sleep(0.05)
    with pytest.raises(LeaseLost, match="taken over by h2 pid 2"):
        lease.check()
    lease.release()
    assert _doc(location)["owner"] == "other"  # never deletes a lease that is no longer its own


def test_bad_ttl_is_named(location):
    with pytest.raises(ValueError, match=r"lock ttl_s=0.1 must be in 0.5\.\.86400 seconds"):
        RunLease(location, "r", ttl_s=0.1)
