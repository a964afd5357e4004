from concurrent.futures import ThreadPoolExecutor

from placement_actors.policies.port_book import PortBook


def test_a_port_is_given_once_per_host() -> None:
    book = PortBook()
    assert book.claim("10.0.0.1", 5000, "a")
    assert not book.claim("10.0.0.1", 5000, "b")
    assert book.claim("10.0.0.2", 5000, "b")  # another host may reuse it
    assert book.given("10.0.0.1") == {5000}
    assert book.given() == {5000}
    assert book.holder("10.0.0.1", 5000) == "a"
    assert book.holder("10.0.0.2", 5000) == "b"
    assert book.holder("10.0.0.1", 5001) is None
    assert book.holders() == {"a", "b"}


def test_releasing_a_holder_frees_only_its_ports() -> None:
    book = PortBook()
    book.claim("h", 1, "a")
    book.claim("h", 2, "b")
    assert book.release("a") == 1
    assert book.given("h") == {2}
    assert book.claim("h", 1, "c")


def test_concurrent_claims_of_one_port_have_one_winner() -> None:
    book = PortBook()
    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(lambda i: book.claim("h", 7000, f"holder-{i}"), range(64)))
    assert wins.count(True) == 1
