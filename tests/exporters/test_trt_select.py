"""Which optimization profile of a TensorRT plan serves a request (exporters/trt_select.py):
the rule on hand-made profiles, the pieces it cuts, and one context per profile on a stand-in
engine. Plain Python: no tensorrt, no torch, no GPU."""

from __future__ import annotations

import pytest

from cips_deploy.errors import CipsError
from cips_deploy.exporters.trt_select import (
    ProfileContexts,
    ProfileRange,
    choose_profile,
    envelope,
    lines_cost,
    opt_distance,
    plan_pieces,
    read_profiles,
    tiled_cost,
)

pytestmark = pytest.mark.runtime

# The docs' example: a latency profile (one sample, big chunks) and a throughput one (16 x 4096).
LATENCY = ProfileRange(0, (1, 1024), (1, 65536), (1, 262144))
THROUGHPUT = ProfileRange(1, (1, 1), (8, 4096), (16, 4096))


def covered(pieces) -> set[tuple[int, int]]:
    return {(b, n) for p in pieces for b in range(p.b0, p.b1) for n in range(p.n0, p.n1)}


def test_a_request_that_fits_a_small_profile_takes_it():
    assert choose_profile([LATENCY, THROUGHPUT], (1, 65536)).index == 0  # 1 call, against 16
    assert choose_profile([THROUGHPUT, LATENCY], (1, 65536)).index == 0  # whatever the order given
    assert choose_profile([LATENCY, THROUGHPUT], (8, 4096)).index == 1  # 1 call, against 8


def test_a_big_batch_takes_the_big_profile():
    request = (16, 4096)
    assert tiled_cost(request, LATENCY).calls == 16 and tiled_cost(request, THROUGHPUT).calls == 1
    assert choose_profile([LATENCY, THROUGHPUT], request) is THROUGHPUT


def test_equal_calls_go_to_the_profile_that_pads_least():
    # 100 points fit one call of either; the latency profile would pad them to its minimum 1024.
    assert tiled_cost((1, 100), LATENCY).padding == 924 and tiled_cost((1, 100), THROUGHPUT).padding == 0
    assert choose_profile([LATENCY, THROUGHPUT], (1, 100)) is THROUGHPUT


def test_equal_calls_and_padding_go_to_the_nearest_opt_then_the_first():
    wide = ProfileRange(0, (1, 1), (1, 65536), (8, 65536))
    narrow = ProfileRange(1, (1, 1), (1, 2048), (8, 65536))
    assert opt_distance((1, 2048), narrow) == 0 and opt_distance((1, 2048), wide) == 5  # 2**5 apart
    assert choose_profile([wide, narrow], (1, 2048)) is narrow
    assert choose_profile([wide, narrow], (1, 60000)) is wide
    twin = ProfileRange(2, narrow.low, narrow.opt, narrow.high)
    assert choose_profile([twin, narrow], (1, 2048)) is narrow  # a full tie: the lowest index
    # A factor of two weighs the same on the batch and on the points axis.
    batchy = ProfileRange(0, (1, 1), (4, 1024), (8, 65536))
    pointy = ProfileRange(1, (1, 1), (2, 2048), (8, 65536))
    assert opt_distance((2, 1024), batchy) == opt_distance((2, 1024), pointy) == 1
    assert choose_profile([pointy, batchy], (2, 1024)) is batchy


def test_a_request_beyond_every_profile_is_cut_for_the_fewest_calls():
    request = (20, 300000)
    # latency: 20 x 2 = 40 calls; throughput: 2 x 74 = 148 calls.
    assert tiled_cost(request, LATENCY).calls == 40 and tiled_cost(request, THROUGHPUT).calls == 148
    chosen = choose_profile([LATENCY, THROUGHPUT], request)
    assert chosen is LATENCY
    pieces = plan_pieces(*request, *zip(chosen.low, chosen.high))
    assert len(pieces) == 40
    assert all(1 <= p.batch <= 1 and 1024 <= p.points <= 262144 for p in pieces)  # within profile 0
    assert sum(p.b1 - p.b0 for p in pieces if p.n0 == 0) == 20 and max(p.n1 for p in pieces) == 300000
    # The remainder of 37,856 points is one call, sent whole (above the minimum: no padding).
    assert tiled_cost(request, LATENCY).padding == 0


def test_pieces_of_the_chosen_profile_cover_the_request_and_pad_below_its_minimum():
    padded = ProfileRange(0, (2, 4), (2, 4), (2, 4))
    pieces = plan_pieces(3, 10, *zip(padded.low, padded.high))
    assert covered(pieces) == {(b, n) for b in range(3) for n in range(10)}
    cost = tiled_cost((3, 10), padded)
    assert cost.calls == len(pieces) == 6
    assert cost.computed == sum(p.batch * p.points for p in pieces) == 48 and cost.padding == 18
    assert plan_pieces(0, 10, (1, 2), (1, 4)) == [] and tiled_cost((0, 10), padded).calls == 0


def test_the_line_engine_advances_rows_and_columns_together():
    # 64 rows and 1 column (a new row group): 64 x 64 profile -> 1 call; 16 x 16 -> 4 calls.
    big = ProfileRange(0, (1, 1, 1), (1, 64, 64), (1, 64, 64))
    small = ProfileRange(1, (1, 1, 1), (1, 16, 16), (1, 16, 16))
    assert lines_cost((1, 64, 1), big).calls == 1 and lines_cost((1, 64, 1), small).calls == 4
    # The exhausted column axis repeats its last value in the 3 further calls: 3 lines of padding.
    assert lines_cost((1, 64, 1), small).padding == 3 and lines_cost((1, 64, 1), big).padding == 0
    assert choose_profile([small, big], (1, 64, 1), lines_cost) is big
    # The compose engine tiles the block: 2 x 3 tiles of a 4 x 4 profile for 8 x 12.
    tile = ProfileRange(0, (1, 1, 1), (1, 4, 4), (1, 4, 4))
    assert tiled_cost((1, 8, 12), tile).calls == 6


def test_profile_ranges_are_checked():
    with pytest.raises(CipsError, match="no range of sizes"):
        ProfileRange(0, (0, 1), (1, 1), (1, 1))
    with pytest.raises(CipsError, match="no range of sizes"):
        ProfileRange(0, (2, 1), (2, 1), (1, 1))
    with pytest.raises(CipsError, match="no optimization profile"):
        choose_profile([], (1, 1))


# ------------------------------------------------- a stand-in TensorRT 10 engine: profiles and contexts


class FakeContext:
    def __init__(self, log):
        self.log, self.profile = log, 0  # a new context runs profile 0 (TensorRT 10)

    def set_optimization_profile_async(self, index, stream_handle):
        self.log.append(("switch", index, stream_handle))
        self.profile = index
        return index != 99


class FakeEngine:
    """``num_optimization_profiles``, ``get_tensor_profile_shape`` and ``create_execution_context``."""

    def __init__(self, profiles: list[dict[str, tuple]]):
        self.profiles, self.log = profiles, []
        self.num_optimization_profiles = len(profiles)

    def get_tensor_profile_shape(self, name, index):
        return self.profiles[index][name]

    def create_execution_context(self):
        self.log.append(("create",))
        return FakeContext(self.log)


ENGINE_PROFILES = [
    {"coords": ((1, 1024, 2), (1, 65536, 2), (1, 262144, 2)), "w": ((1, 64), (1, 64), (1, 64))},
    {"coords": ((1, 1, 2), (8, 4096, 2), (16, 4096, 2)), "w": ((1, 64), (8, 64), (16, 64))},
]


def test_every_profile_of_the_engine_is_read():
    profiles = read_profiles(FakeEngine(ENGINE_PROFILES), [("coords", 0), ("coords", 1)])
    assert profiles == (LATENCY, THROUGHPUT)
    assert envelope(profiles) == ((1, 1), (16, 262144))
    grid = FakeEngine([{"v": ((1, 1), (2, 32), (2, 32)), "u": ((1, 1), (2, 16), (2, 16))}])
    assert read_profiles(grid, [("v", 0), ("v", 1), ("u", 1)]) == (ProfileRange(0, (1, 1, 1), (2, 32, 16), (2, 32, 16)),)
    with pytest.raises(CipsError, match="no optimization profile"):
        read_profiles(FakeEngine([]), [("coords", 0)])


def test_each_profile_gets_its_own_context_switched_once_on_the_engines_stream():
    engine = FakeEngine(ENGINE_PROFILES)
    contexts = ProfileContexts(engine, stream_handle=1234, source="m.plan")
    assert engine.log == [] and contexts.created() == []  # lazily: nothing before the first call
    chosen = choose_profile(read_profiles(engine, [("coords", 0), ("coords", 1)]), (16, 4096))
    context = contexts[chosen.index]
    assert context.profile == 1 and engine.log == [("create",), ("switch", 1, 1234)]
    assert contexts[1] is context and len(engine.log) == 2  # switched once, then reused
    first = contexts[0]
    assert first.profile == 0 and first is not context
    assert engine.log[2:] == [("create",)]  # profile 0 is a new context's own: no switch
    assert contexts.created() == [0, 1]
    with pytest.raises(IndexError):
        contexts[2]


def test_a_refused_profile_switch_is_one_sentence():
    engine = FakeEngine(ENGINE_PROFILES * 50)  # 100 profiles; the fake refuses number 99
    with pytest.raises(CipsError, match="refused optimization profile 99 of m.plan"):
        ProfileContexts(engine, 0, "m.plan")[99]


@pytest.mark.parametrize("size, low, high", [(0, 1, 4), (1, 1, 4), (4, 2, 4), (10, 4, 4), (10, 3, 4), (9, 1, 3), (5, 7, 9)])
def test_the_cost_of_an_axis_is_that_of_its_pieces(size, low, high):
    from cips_deploy.exporters.trt_select import axis_cost, axis_splits

    splits = axis_splits(size, low, high)
    assert axis_cost(size, low, high) == (len(splits), sum(sent for _, _, sent in splits))
    assert [start for start, _, _ in splits] == list(range(0, size, high))
    assert all(low <= sent <= high and sent >= stop - start for start, stop, sent in splits)
