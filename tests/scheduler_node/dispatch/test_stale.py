"""The stale kept-alive rule (``scheduler_node/dispatch/stale.py``): one test per row, and the table is complete."""

from __future__ import annotations

import itertools

import pytest

from scheduler_node.dispatch.stale import STALE_RULE, StaleAction, StaleFacts, matches, stale_action

A, R, F = StaleAction.FAIL, StaleAction.REOPEN, StaleAction.RESEND


def facts(reused: bool, first: bool, started: bool, written: bool, resend: bool) -> StaleFacts:
    return StaleFacts(
        reused=reused, first=first, response_started=started, request_written=written, resend_allowed=resend
    )


def test_fresh_connection_failing_is_never_retried_here() -> None:
    # A new connection failing is the target's doing: the retry policy decides, whatever else is true.
    for first, started, written, resend in itertools.product((False, True), repeat=4):
        assert stale_action(facts(False, first, started, written, resend)) is A


def test_again_at_most_one_automatic_retry() -> None:
    assert stale_action(facts(True, False, False, False, True)) is A
    assert stale_action(facts(True, False, False, True, True)) is A


def test_spoke_a_response_byte_means_the_server_took_the_request() -> None:
    assert stale_action(facts(True, True, True, True, True)) is A
    assert stale_action(facts(True, True, True, False, False)) is A


def test_clean_nothing_went_out_reopens_under_both_semantics() -> None:
    assert stale_action(facts(True, True, False, False, True)) is R  # AT_LEAST_ONCE
    assert stale_action(facts(True, True, False, False, False)) is R  # AT_MOST_ONCE


def test_lost_at_least_once_is_resent_once() -> None:
    assert stale_action(facts(True, True, False, True, True)) is F


def test_keep_at_most_once_is_never_resent() -> None:
    assert stale_action(facts(True, True, False, True, False)) is A


@pytest.mark.parametrize("case", list(itertools.product((False, True), repeat=5)))
def test_exactly_one_row_matches_every_case(case: tuple[bool, ...]) -> None:
    f = StaleFacts(*case)
    rows = [name for name, pattern, _ in STALE_RULE if matches(pattern, f)]
    assert len(rows) == 1, (f, rows)


def test_only_a_first_failure_on_a_reused_silent_connection_goes_again() -> None:
    # The rule written out longhand, as the dispatcher's docstring used to say it.
    for case in itertools.product((False, True), repeat=5):
        f = StaleFacts(*case)
        if f.reused and f.first and not f.response_started and not f.request_written:
            want = R
        elif f.reused and f.first and not f.response_started and f.resend_allowed:
            want = F
        else:
            want = A
        assert stale_action(f) is want, f
