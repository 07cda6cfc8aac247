"""The shard planner against its rules (protocol/planner.py) and a reference model of the fair shares.

The reference for the quotas is the obvious greedy: start every eligible node at its pin count and hand the
unpinned shards out one at a time to a least-loaded node. Its sorted load vector is the unique balanced one,
so the planner's shares must match it as a multiset. Clusters are simulated two ways: synchronous rounds
(every live node plans from one view, all release, then all take) and turns (one node at a time plans from
the latest view, releases, takes), always taking a key only when it is free, as etcd's create-if-absent does.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Set
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from protocol import planner
from protocol.planner import Plan, fair_shares, plan_for, plan_from_target, target_assignment
from protocol.shards import rendezvous_rank

NODES = [f"n{i}" for i in range(8)]
DEAD = ["gone-1", "gone-2"]  # owners and pin targets that hold no lease

Owners = dict[int, str]
View = tuple[int, set[str], set[str], dict[int, str], Owners]  # shards, live, drained, pins, current


# -- reference model and checks ------------------------------------------------------------------------------


def reference_loads(shards: int, eligible: Set[str], pins: Mapping[int, str]) -> list[int]:
    """Sorted loads of the balanced assignment: pins, then each unpinned shard to a least-loaded node."""
    if not eligible:
        return []
    load = Counter({n: 0 for n in eligible})
    honoured = {s: n for s, n in pins.items() if n in eligible}
    load.update(honoured.values())
    for _ in range(shards - len(honoured)):
        load[min(load, key=lambda n: (load[n], n))] += 1
    return sorted(load.values())


def assert_balanced(
    owners: Owners, shards: int, live: Set[str], drained: Set[str], pins: Mapping[int, str]
) -> None:
    """The end state of a converged cluster: the planner's rules that a final state can show."""
    eligible = set(live) - set(drained)
    honoured = {s: n for s, n in pins.items() if n in eligible}
    if not eligible:
        assert not any(o in live for o in owners.values()), "nothing eligible, yet a live node holds a shard"
        return
    assert sorted(owners) == list(range(shards)), "some shard has no owner"
    assert set(owners.values()) <= eligible, "a drained or dead node still holds a shard"
    assert all(owners[s] == n for s, n in honoured.items()), "a pin to an eligible node is not honoured"
    load = Counter({n: 0 for n in eligible})
    load.update(owners.values())
    assert sorted(load.values()) == reference_loads(shards, eligible, pins)
    # Local form of the same: no node holds an unpinned shard while another holds two fewer.
    unpinned_holders = {o for s, o in owners.items() if s not in honoured}
    if unpinned_holders:
        assert max(load[n] for n in unpinned_holders) <= min(load.values()) + 1, load
    if not honoured:
        q, r = divmod(shards, len(eligible))
        assert Counter(load.values()) == Counter({q + 1: r, q: len(eligible) - r}) - Counter(), load


def assert_one_view_consistent(
    shards: int,
    live: Set[str],
    drained: Set[str],
    pins: Mapping[int, str],
    owners: Owners,
) -> tuple[dict[int, str], list[Plan]]:
    """Plans of every node from one view: disjoint wants covering all shards, sane per-node sets.

    Returns the target and the plans of the live nodes (the dead ones were checked too: they want nothing)."""
    target = target_assignment(shards, live, drained=drained, pins=pins, current=owners)
    plans = [plan_from_target(n, target, live=live, current=owners) for n in sorted(live | set(DEAD))]
    seen: set[int] = set()
    for p in plans:
        assert not (p.wanted & seen), f"{sorted(p.wanted & seen)} wanted by two nodes in one view"
        seen |= p.wanted
        assert p.wanted == {s for s, n in target.items() if n == p.node}
        assert len(p.keep) + len(p.take) + len(p.awaiting) == len(p.wanted)
        assert not (p.release & p.wanted)
        assert p.keep | p.release == {s for s, o in owners.items() if o == p.node}
        assert all(owners.get(s) is None or owners[s] not in live for s in p.take)
        assert all(owners[s] in live and owners[s] != p.node for s in p.awaiting)
    eligible = live - drained
    assert seen == (set(range(shards)) if eligible else set())
    assert set(target.values()) <= eligible
    return target, [p for p in plans if p.node in live]


# -- simulations ---------------------------------------------------------------------------------------------


def run_rounds(
    shards: int,
    live: Set[str],
    *,
    drained: Set[str] = frozenset(),
    pins: Mapping[int, str] | None = None,
    current: Owners | None = None,
    max_rounds: int = 2,
) -> Owners:
    """Synchronous rounds until every plan is settled; fails if that takes more than ``max_rounds`` rounds."""
    pins = pins or {}
    owners = dict(current or {})
    for _ in range(max_rounds + 1):
        _, plans = assert_one_view_consistent(shards, set(live), set(drained), pins, owners)
        if all(p.settled for p in plans):
            return owners
        for p in plans:
            for s in p.release:
                assert owners.pop(s) == p.node
        for p in plans:
            for s in p.take:
                # create-if-absent: free, or the dead owner's lease has expired by now
                assert s not in owners or owners[s] not in live
                owners[s] = p.node
    pytest.fail(f"not converged after {max_rounds} synchronous rounds")


def turn(
    node: str, shards: int, live: Set[str], drained: Set[str], pins: Mapping[int, str], owners: Owners
) -> bool:
    """One node plans from the latest view, releases, then takes; answers whether it changed anything."""
    plan = plan_for(node, shards, live, drained=drained, pins=pins, current=owners)
    for s in plan.release:
        del owners[s]
    for s in plan.take:
        assert s not in owners or owners[s] not in live
        owners[s] = node
    return bool(plan.release or plan.take)


def run_turns(
    shards: int,
    live: Set[str],
    drained: Set[str],
    pins: Mapping[int, str],
    owners: Owners,
    rng: random.Random,
    max_rounds: int = 3,
) -> Owners:
    """Rounds of turns, each live node once per round in a shuffled order, until a round changes nothing."""
    owners = dict(owners)
    for _ in range(max_rounds + 1):
        order = sorted(live)
        rng.shuffle(order)
        changed = [turn(n, shards, live, drained, pins, owners) for n in order]
        if not any(changed):
            assert all(p.settled for p in assert_one_view_consistent(shards, live, drained, pins, owners)[1])
            return owners
    pytest.fail(f"not converged after {max_rounds} rounds of turns")


def moved(before: Owners, after: Owners) -> set[int]:
    return {s for s in before.keys() | after.keys() if before.get(s) != after.get(s)}


# -- strategies ----------------------------------------------------------------------------------------------


@st.composite
def views(draw: st.DrawFn, max_shards: int = 96) -> View:
    """Arbitrary views: any live set (maybe empty), drains (maybe of dead nodes), pins (maybe to dead or
    drained nodes, maybe piled on one node), owners (maybe dead, drained, or missing)."""
    shards = draw(st.integers(0, max_shards))
    live = draw(st.sets(st.sampled_from(NODES)))
    drained = draw(st.sets(st.sampled_from(NODES), max_size=3))
    anyone = st.sampled_from(NODES + DEAD)
    ids = st.integers(0, max(shards - 1, 0))
    current = draw(st.dictionaries(ids, anyone)) if shards else {}
    pin_to = draw(st.sampled_from([anyone, st.sampled_from(NODES[:2])]))  # spread, or heavy on two nodes
    pin_count = draw(st.sampled_from([0, 3, shards]))
    pins = draw(st.dictionaries(ids, pin_to, max_size=pin_count)) if shards else {}
    return shards, live, drained, pins, current


def small_pins(shards: int, nodes: list[str]) -> st.SearchStrategy[dict[int, str]]:
    return st.dictionaries(st.integers(0, shards - 1), st.sampled_from(nodes + DEAD), max_size=5)


# -- named cases ---------------------------------------------------------------------------------------------


def test_fourth_node_joining_85_85_86_moves_exactly_64() -> None:
    three = {"node-a", "node-b", "node-c"}
    before = run_rounds(256, three)
    assert sorted(Counter(before.values()).values()) == [85, 85, 86]
    after = run_rounds(256, three | {"node-d"}, current=before)
    changed = moved(before, after)
    assert len(changed) == 64
    assert all(after[s] == "node-d" for s in changed)
    assert Counter(after.values()) == {"node-a": 64, "node-b": 64, "node-c": 64, "node-d": 64}


def test_join_is_first_awaited_then_taken() -> None:
    # The worked example of the module docstring.
    live = {"a", "b", "c"}
    current = {s: "a" if s < 4 else "b" for s in range(8)}
    assert fair_shares(8, live, current=current) == {"a": 3, "b": 3, "c": 2}
    a, b, c = (plan_for(n, 8, live, current=current) for n in ("a", "b", "c"))
    assert (a.keep, a.release) == ({0, 1, 2}, {3})
    assert (b.keep, b.release) == ({4, 6, 7}, {5})
    assert (c.take, c.awaiting) == (frozenset(), {3, 5})
    for s in a.release | b.release:
        del current[s]
    assert plan_for("c", 8, live, current=current).take == {3, 5}


def test_node_crash_moves_only_its_shards() -> None:
    four = {"node-a", "node-b", "node-c", "node-d"}
    before = run_rounds(256, four)
    # node-d's lease expired: its keys are still in the view until etcd deletes them; either way the same.
    after = run_rounds(256, four - {"node-d"}, current=before)
    assert moved(before, after) == {s for s, n in before.items() if n == "node-d"}
    assert sorted(Counter(after.values()).values()) == [85, 85, 86]
    gone = {s: n for s, n in before.items() if n != "node-d"}
    assert run_rounds(256, four - {"node-d"}, current=gone) == after


def test_drain_empties_the_node_and_moves_only_its_shards() -> None:
    four = {"node-a", "node-b", "node-c", "node-d"}
    before = run_rounds(256, four)
    plan = plan_for("node-d", 256, four, drained={"node-d"}, current=before)
    assert plan.release == {s for s, n in before.items() if n == "node-d"} and not plan.wanted
    after = run_rounds(256, four, drained={"node-d"}, current=before)
    assert "node-d" not in after.values()
    assert moved(before, after) == plan.release
    # Undraining is a join: the node takes back exactly its share, from the others only.
    back = run_rounds(256, four, current=after)
    assert len(moved(after, back)) == Counter(back.values())["node-d"] == 64


def test_pins_count_toward_the_share() -> None:
    pins = {0: "a", 1: "a", 2: "a"}
    owners = run_rounds(8, {"a", "b"}, pins=pins)
    assert all(owners[s] == "a" for s in pins)
    assert Counter(owners.values()) == {"a": 4, "b": 4}  # a's 4 are its 3 pins plus one


def test_pins_above_the_share_leave_the_rest_balanced() -> None:
    pins = {s: "c" for s in range(5)}
    shares = fair_shares(8, {"a", "b", "c"}, pins=pins)
    assert shares["c"] == 5 and sorted((shares["a"], shares["b"])) == [1, 2]
    owners = run_rounds(8, {"a", "b", "c"}, pins=pins)
    assert [s for s, n in owners.items() if n == "c"] == [0, 1, 2, 3, 4]


def test_pin_moves_the_shard_through_a_graceful_handover() -> None:
    live = {"a", "b"}
    owners = run_rounds(16, live)
    shard = next(s for s, n in owners.items() if n == "a")
    pins = {shard: "b"}
    assert shard in plan_for("a", 16, live, pins=pins, current=owners).release
    assert shard in plan_for("b", 16, live, pins=pins, current=owners).awaiting
    after = run_rounds(16, live, pins=pins, current=owners)
    assert after[shard] == "b" and Counter(after.values()) == {"a": 8, "b": 8}


def test_drain_wins_over_pin_and_the_pin_returns_on_undrain() -> None:
    live = {"a", "b", "c"}
    pins = {0: "c", 1: "c"}
    owners = run_rounds(12, live, pins=pins)
    drained = run_rounds(12, live, drained={"c"}, pins=pins, current=owners)
    assert "c" not in drained.values()  # the pin does not keep shards on a drained node
    assert fair_shares(12, live, drained={"c"}, pins=pins) == {"a": 6, "b": 6}
    back = run_rounds(12, live, pins=pins, current=drained)
    assert back[0] == back[1] == "c"


def test_pin_to_a_dead_node_is_ignored_until_it_is_live() -> None:
    pins = {3: "gone-1"}
    owners = run_rounds(10, {"a", "b"}, pins=pins)
    assert owners[3] in {"a", "b"}
    owners = run_rounds(10, {"a", "b", "gone-1"}, pins=pins, current=owners)
    assert owners[3] == "gone-1"


def test_handover_kinds_from_one_view() -> None:
    live = {"a", "b", "d"}
    current = {0: "dead", 1: "d", 2: "b", 3: "a"}
    pins = {0: "a", 1: "a", 2: "a", 3: "b"}
    plan = plan_for("a", 4, live, drained={"d"}, pins=pins, current=current)
    assert plan == Plan(
        "a", keep=frozenset(), take=frozenset({0}), awaiting=frozenset({1, 2}), release=frozenset({3})
    )
    assert not plan.settled
    assert plan_for("d", 4, live, drained={"d"}, pins=pins, current=current).release == {1}
    assert plan_for("stranger", 4, live, pins=pins, current=current) == Plan(
        "stranger", frozenset(), frozenset(), frozenset(), frozenset()
    )


def test_no_eligible_node_wants_nothing_and_drained_nodes_let_go() -> None:
    current = {0: "a", 1: "b"}
    assert target_assignment(2, {"a", "b"}, drained={"a", "b"}, current=current) == {}
    assert fair_shares(2, set(), current=current) == {}
    assert plan_for("a", 2, {"a", "b"}, drained={"a", "b"}, current=current).release == {0}
    assert run_rounds(2, {"a", "b"}, drained={"a", "b"}, current=current) == {}
    assert target_assignment(0, {"a"}) == {}


def test_more_nodes_than_shards() -> None:
    live = {f"n{i}" for i in range(5)}
    owners = run_rounds(3, live)
    assert sorted(Counter(owners.values()).values()) == [1, 1, 1]
    # a 6th node gets no share: nothing moves
    assert run_rounds(3, live | {"n5"}, current=owners) == owners


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [("pins", {"pins": {256: "a"}}), ("current", {"current": {-1: "a"}})],
)
def test_shard_outside_the_range_is_refused_naming_the_field(field: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: shard -?\d+ is outside 0\.\.255"):
        target_assignment(256, {"a"}, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        target_assignment(-1, {"a"})


def test_public_api() -> None:
    assert sorted(planner.__all__) == [
        "Plan",
        "bids",
        "fair_shares",
        "plan_for",
        "plan_from_target",
        "target_assignment",
    ]
    assert all(hasattr(planner, name) for name in planner.__all__)


# -- properties ----------------------------------------------------------------------------------------------


@given(st.integers(0, 4096), st.lists(st.text("abc-1", min_size=1, max_size=6), min_size=1, max_size=12))
def test_bids_rank_like_rendezvous(shard: int, nodes: list[str]) -> None:
    # The planner hashes pairs itself for speed; this pins it to protocol/shards.py's ranking.
    nodes = sorted(set(nodes))
    bids = {n: planner.bids(n, [shard])[0] for n in nodes}
    assert sorted(nodes, key=lambda n: (-bids[n], n)) == rendezvous_rank(shard, nodes)


@given(st.integers(1, 200), st.sets(st.sampled_from(NODES), min_size=1))
def test_cold_start_is_rendezvous_bounded_by_the_quotas(shards: int, live: set[str]) -> None:
    # No blocking pair: a shard sits off its rendezvous owner only when every node ranked above the one it got
    # is full of shards that node bids higher for. Without quotas this would be rendezvous_owner exactly.
    target = target_assignment(shards, live)
    bid = {n: planner.bids(n, list(range(shards))) for n in live}
    lowest_held = {n: min((bid[n][s] for s, m in target.items() if m == n), default=None) for n in live}
    shares = fair_shares(shards, live)
    for s, m in target.items():
        for better in rendezvous_rank(s, live):
            if better == m:
                break
            held = lowest_held[better]  # None: it holds nothing, its share being 0
            assert Counter(target.values())[better] == shares[better]
            assert held is None or held > bid[better][s]


@given(views())
def test_converges_balanced_in_two_synchronous_rounds(view: View) -> None:
    shards, live, drained, pins, current = view
    owners = run_rounds(shards, live, drained=drained, pins=pins, current=current, max_rounds=2)
    assert_balanced(owners, shards, live, drained, pins)
    # the target of a converged view is the view itself
    if live - drained:
        assert target_assignment(shards, live, drained=drained, pins=pins, current=owners) == owners


@settings(max_examples=60)
@given(views(max_shards=64), st.randoms(use_true_random=False))
def test_converges_balanced_when_nodes_act_on_different_views(view: View, rng: random.Random) -> None:
    shards, live, drained, pins, current = view
    owners = run_turns(shards, live, drained, pins, current, rng, max_rounds=3)
    assert_balanced(owners, shards, live, drained, pins)


@given(views())
def test_one_view_wants_each_shard_once_and_shares_match_the_reference(view: View) -> None:
    shards, live, drained, pins, current = view
    assert_one_view_consistent(shards, live, drained, pins, current)
    shares = fair_shares(shards, live, drained=drained, pins=pins, current=current)
    assert sorted(shares.values()) == reference_loads(shards, live - drained, pins)
    target = target_assignment(shards, live, drained=drained, pins=pins, current=current)
    assert Counter(target.values()) == Counter({n: q for n, q in shares.items() if q})


@given(views(), st.randoms(use_true_random=False))
def test_same_view_same_plan_whatever_the_input_order(view: View, rng: random.Random) -> None:
    shards, live, drained, pins, current = view

    def shuffled_dict(d: dict[int, str]) -> dict[int, str]:
        items = list(d.items())
        rng.shuffle(items)
        return dict(items)

    live_list = sorted(live) * 2  # duplicates, in another order
    rng.shuffle(live_list)
    kwargs_a: dict[str, Any] = {"drained": frozenset(drained), "pins": pins, "current": current}
    kwargs_b: dict[str, Any] = {
        "drained": list(reversed(sorted(drained))),
        "pins": shuffled_dict(pins),
        "current": shuffled_dict(current),
    }
    target = target_assignment(shards, live, **kwargs_a)
    assert target == target_assignment(shards, iter(live_list), **kwargs_b)
    assert fair_shares(shards, live, **kwargs_a) == fair_shares(shards, live_list, **kwargs_b)
    for node in sorted(live)[:3]:
        assert plan_for(node, shards, live, **kwargs_a) == plan_for(node, shards, iter(live_list), **kwargs_b)


@given(st.integers(1, 300), st.integers(1, 7), st.data())
def test_join_moves_exactly_the_newcomers_share(shards: int, n: int, data: st.DataObject) -> None:
    live = set(NODES[:n])
    pins = data.draw(small_pins(shards, NODES[:n]))
    before = run_rounds(shards, live, pins=pins)
    after = run_rounds(shards, live | {"new"}, pins=pins, current=before)
    changed = moved(before, after)
    assert all(after[s] == "new" for s in changed)
    assert (
        len(changed)
        == Counter(after.values())["new"]
        == fair_shares(shards, live | {"new"}, pins=pins, current=after)["new"]
    )


@given(st.integers(1, 300), st.integers(2, 8), st.data())
def test_leave_moves_only_the_leavers_shards(shards: int, n: int, data: st.DataObject) -> None:
    live = set(NODES[:n])
    pins = data.draw(small_pins(shards, NODES[:n]))
    leaver = data.draw(st.sampled_from(sorted(live)))
    before = run_rounds(shards, live, pins=pins)
    theirs = {s for s, o in before.items() if o == leaver}
    crashed = run_rounds(shards, live - {leaver}, pins=pins, current=before)
    drained = run_rounds(shards, live, drained={leaver}, pins=pins, current=before)
    assert moved(before, crashed) == theirs == moved(before, drained)
    assert crashed == drained


# -- stateful: a cluster under membership changes and admin overrides ----------------------------------------


class Cluster(RuleBasedStateMachine):
    """A cluster driven by joins, crashes, drains, pins and single turns on shifting views.

    After every change the cluster is run to convergence by turns and checked against the rules; changes made
    from a converged state also check the movement (a join moves the newcomer's share, a leave the leaver's).
    """

    @initialize(shards=st.integers(1, 64), n=st.integers(1, 4), seed=st.integers(0, 2**32))
    def setup(self, shards: int, n: int, seed: int) -> None:
        self.shards = shards
        self.live = set(NODES[:n])
        self.drained: set[str] = set()
        self.pins: dict[int, str] = {}
        self.rng = random.Random(seed)
        self.owners: Owners = {}
        self.owners = self.settle()

    def settle(self, owners: Owners | None = None) -> Owners:
        return run_turns(
            self.shards,
            self.live,
            self.drained,
            self.pins,
            dict(self.owners if owners is None else owners),
            self.rng,
        )

    @precondition(lambda self: len(self.live) < len(NODES))
    @rule(data=st.data())
    def join(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from(sorted(set(NODES) - self.live)))
        # A node that crashed comes back with a new lease; the keys bound to its old one have expired.
        self.owners = {s: o for s, o in self.owners.items() if o != node}
        before = self.settle()
        self.live.add(node)
        self.owners = self.settle(before)
        if node not in self.pins.values() and node not in self.drained:
            changed = moved(before, self.owners)
            assert all(self.owners[s] == node for s in changed)
            assert len(changed) == Counter(self.owners.values())[node]

    @precondition(lambda self: self.live)
    @rule(data=st.data(), drain=st.booleans())
    def leave(self, data: st.DataObject, drain: bool) -> None:
        node = data.draw(st.sampled_from(sorted(self.live)))
        before = self.settle()
        if drain:
            self.drained.add(node)
        else:
            self.live.discard(node)
        self.owners = self.settle(before)
        if self.live - self.drained:
            assert moved(before, self.owners) == {s for s, o in before.items() if o == node}

    @precondition(lambda self: self.drained)
    @rule(data=st.data())
    def undrain(self, data: st.DataObject) -> None:
        self.drained.discard(data.draw(st.sampled_from(sorted(self.drained))))

    @rule(data=st.data())
    def pin(self, data: st.DataObject) -> None:
        shard = data.draw(st.integers(0, self.shards - 1))
        self.pins[shard] = data.draw(st.sampled_from(NODES + DEAD))

    @precondition(lambda self: self.pins)
    @rule(data=st.data())
    def unpin(self, data: st.DataObject) -> None:
        del self.pins[data.draw(st.sampled_from(sorted(self.pins)))]

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def one_turn(self, data: st.DataObject) -> None:
        # A single node acts on the latest view: the cluster is left mid-rebalance for the next rule.
        node = data.draw(st.sampled_from(sorted(self.live)))
        turn(node, self.shards, self.live, self.drained, self.pins, self.owners)

    @invariant()
    def one_view_is_consistent(self) -> None:
        assert_one_view_consistent(self.shards, self.live, self.drained, self.pins, self.owners)

    @invariant()
    def converges_balanced(self) -> None:
        assert_balanced(self.settle(), self.shards, self.live, self.drained, self.pins)


TestCluster = Cluster.TestCase
TestCluster.settings = settings(max_examples=40, stateful_step_count=15, deadline=None)
