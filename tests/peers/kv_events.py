"""A KV-event subscriber as a router writes one: vLLM's event types as msgspec structs, a ZMQ
SUB socket, vLLM's replay protocol, and an index of the replica's resident blocks.

Usage: python3 tests/peers/kv_events.py tcp://HOST:PORT [tcp://HOST:REPLAY_PORT] [--topic T]
prints every batch. Needs: `pip install pyzmq msgspec`.
"""

import argparse
import collections
import threading

import msgspec
import zmq

ExternalBlockHash = int | bytes


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list
    data_parallel_rank: int | None = None


class KVCacheEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    """The tagged union's base: each event is an array whose first element is its type name."""


class BlockStored(KVCacheEvent):
    block_hashes: list[ExternalBlockHash]
    parent_block_hash: ExternalBlockHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[tuple | None] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[ExternalBlockHash]
    medium: str | None
    group_idx: int | None = None


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(EventBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


DECODER = msgspec.msgpack.Decoder(type=KVEventBatch)
END_OF_REPLAY = (-1).to_bytes(8, "big", signed=True)


class Subscriber:
    """Every batch published on `endpoint` under `topic`, by sequence number, as raw payloads;
    `replay` fetches the ones a late subscription missed."""

    def __init__(self, endpoint, replay_endpoint=None, topic=""):
        self.context = zmq.Context()
        self.sub = self.context.socket(zmq.SUB)
        self.sub.connect(endpoint)
        self.sub.setsockopt_string(zmq.SUBSCRIBE, topic)
        self.topic = topic.encode()
        self.replay_endpoint = replay_endpoint
        self.payloads = {}
        self.live = set()
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self.receive, daemon=True)
        self.thread.start()

    def receive(self):
        while self.running:
            if not self.sub.poll(50):
                continue
            topic, sequence, payload = self.sub.recv_multipart()
            assert topic == self.topic, topic
            assert len(sequence) == 8, sequence
            with self.lock:
                seq = int.from_bytes(sequence, "big")
                self.payloads[seq] = payload
                self.live.add(seq)

    def count(self):
        with self.lock:
            return len(self.payloads)

    def replay(self, start=0, timeout_ms=2000):
        """Ask the replay socket for every buffered batch from `start`; returns them in order.

        The publisher's ROUTER answers one request with many messages, `(seq, payload)` each,
        then `(-1, b"")`. A REQ socket takes only the first reply, so this is a DEALER that
        sends and strips the empty delimiter frame a REQ would.
        """
        request = self.context.socket(zmq.DEALER)
        request.connect(self.replay_endpoint)
        try:
            request.send_multipart([b"", start.to_bytes(8, "big")])
            replayed = []
            while True:
                if not request.poll(timeout_ms):
                    raise TimeoutError("the replay socket stopped answering")
                delimiter, sequence, payload = request.recv_multipart()
                assert delimiter == b"", delimiter
                if sequence == END_OF_REPLAY:
                    assert payload == b"", payload
                    return replayed
                replayed.append((int.from_bytes(sequence, "big"), payload))
        finally:
            request.close(linger=0)

    def close(self):
        self.running = False
        self.thread.join()
        self.sub.close(linger=0)
        self.context.term()


class ResidentBlocks:
    """A router's index of one replica: how many cached blocks it holds under each hash."""

    def __init__(self):
        self.blocks = collections.Counter()
        self.stored = self.removed = self.cleared = 0
        self.salted_first_blocks = []

    def apply(self, batch):
        for event in batch.events:
            if isinstance(event, BlockStored):
                assert len(event.token_ids) == event.block_size * len(event.block_hashes), event
                assert event.extra_keys is None or len(event.extra_keys) == len(event.block_hashes)
                if event.parent_block_hash is not None:
                    # The parent chain: a block is stored after the block before it.
                    assert self.blocks[event.parent_block_hash] > 0, event
                if event.extra_keys and event.extra_keys[0] is not None:
                    self.salted_first_blocks.append((tuple(event.extra_keys[0]),
                                                     event.block_hashes[0]))
                self.blocks.update(event.block_hashes)
                self.stored += len(event.block_hashes)
            elif isinstance(event, BlockRemoved):
                for block_hash in event.block_hashes:
                    assert self.blocks[block_hash] > 0, f"{block_hash} removed, never stored"
                    self.blocks[block_hash] -= 1
                self.removed += len(event.block_hashes)
            else:
                self.blocks.clear()
                self.cleared += 1
        self.blocks = +self.blocks


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("replay_endpoint", nargs="?")
    parser.add_argument("--topic", default="")
    args = parser.parse_args()
    subscriber = Subscriber(args.endpoint, args.replay_endpoint, args.topic)
    seen = 0
    try:
        while True:
            subscriber.thread.join(0.2)
            with subscriber.lock:
                fresh = sorted(s for s in subscriber.payloads if s >= seen)
                batches = [(s, subscriber.payloads[s]) for s in fresh]
            for sequence, payload in batches:
                print(sequence, DECODER.decode(payload))
                seen = sequence + 1
    except KeyboardInterrupt:
        subscriber.close()


if __name__ == "__main__":
    main()
