"""The Python StandardMerkleTree agrees with OpenZeppelin's @openzeppelin/merkle-tree, byte for byte."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from services.settlement.merkle import StandardMerkleTree, leaf_hash, verify

REPO_ROOT = Path(__file__).resolve().parents[3]

# Reads [{values, dump}] on stdin; for each set prints OpenZeppelin's root and proofs, and whether
# OpenZeppelin can load and validate our dump.
OZ_SCRIPT = """
const { StandardMerkleTree } = require("@openzeppelin/merkle-tree");
const sets = JSON.parse(require("fs").readFileSync(0, "utf8"));
const out = sets.map(({ values, dump }) => {
  const tree = StandardMerkleTree.of(values, ["address", "uint256"]);
  const loaded = StandardMerkleTree.load(dump);
  loaded.validate();
  return { root: tree.root, proofs: values.map((_, i) => tree.getProof(i)), loadedRoot: loaded.root,
           loadedVerifies: values.every((v) => loaded.verify(v, loaded.getProof(v))) };
});
process.stdout.write(JSON.stringify(out));
"""


def random_leaves(rng: random.Random, n: int) -> list[tuple[str, int]]:
    accounts = {"0x" + rng.randbytes(20).hex() for _ in range(n)}
    return [(a, rng.choice([0, 1, rng.randrange(10**6), rng.randrange(2**256)])) for a in sorted(accounts)]


def openzeppelin(sets: list[list[tuple[str, int]]]) -> list[dict[str, object]]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH; install Node.js 20 and run `npm ci`")
    payload = [{"values": [[a, str(u)] for a, u in leaves], "dump": StandardMerkleTree.of(leaves).dump()}
               for leaves in sets]
    done = subprocess.run([node, "-e", OZ_SCRIPT], input=json.dumps(payload), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: list[dict[str, object]] = json.loads(done.stdout)
    return result


def test_root_and_proofs_equal_openzeppelins_for_random_leaf_sets() -> None:
    rng = random.Random(20261125)
    sets = [random_leaves(rng, n) for n in (1, 2, 3, 4, 5, 7, 8, 13, 64, 100, 257)]
    for leaves, oz in zip(sets, openzeppelin(sets), strict=True):
        ours = StandardMerkleTree.of(leaves)
        assert ours.root_hex == oz["root"]
        assert [["0x" + p.hex() for p in ours.proof(a)] for a, _ in leaves] == oz["proofs"]


def test_openzeppelin_loads_and_validates_our_dump() -> None:
    rng = random.Random(7)
    sets = [random_leaves(rng, n) for n in (1, 6, 33)]
    for leaves, oz in zip(sets, openzeppelin(sets), strict=True):
        assert oz["loadedRoot"] == StandardMerkleTree.of(leaves).root_hex
        assert oz["loadedVerifies"] is True


def test_every_proof_verifies_and_a_changed_amount_does_not() -> None:
    leaves = random_leaves(random.Random(3), 50)
    tree = StandardMerkleTree.of(leaves)
    for account, units in leaves:
        assert verify(tree.root, account, units, tree.proof(account))
        assert not verify(tree.root, account, units + 1, tree.proof(account))


def test_leaf_is_the_double_hash_of_the_abi_encoded_pair() -> None:
    # keccak256(bytes.concat(keccak256(abi.encode(0x…01, 1)))) as computed by Solidity / OpenZeppelin
    assert leaf_hash("0x" + "00" * 19 + "01", 1).hex() == _oz_leaf("0x" + "00" * 19 + "01", 1)


def _oz_leaf(account: str, units: int) -> str:
    node = shutil.which("node")
    assert node is not None
    script = ('const { standardLeafHash } = require("@openzeppelin/merkle-tree/dist/hashes");'
              f'process.stdout.write(standardLeafHash(["address","uint256"], ["{account}", "{units}"]));')
    done = subprocess.run([node, "-e", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.removeprefix("0x")


def test_account_case_does_not_change_the_leaf() -> None:
    account = "0xAbCdEf0123456789aBcDeF0123456789AbCdEf01"
    assert leaf_hash(account, 5) == leaf_hash(account.lower(), 5)
    tree = StandardMerkleTree.of([(account, 5)])
    assert tree.proof(account.lower()) == []
    assert tree.root == leaf_hash(account, 5)


@pytest.mark.parametrize(
    ("leaves", "error"),
    [
        ([], ValueError),
        ([("0x" + "11" * 20, 1), ("0x" + "11" * 20, 2)], ValueError),
        ([("0x1234", 1)], ValueError),
        ([("0x" + "11" * 20, -1)], ValueError),
        ([("0x" + "11" * 20, 2**256)], ValueError),
        ([("0x" + "11" * 20, 1.5)], TypeError),
    ],
    ids=["empty", "repeated-account", "short-address", "negative", "over-uint256", "float-amount"],
)
def test_bad_leaves_are_refused(leaves: list[tuple[str, int]], error: type[Exception]) -> None:
    with pytest.raises(error):
        StandardMerkleTree.of(leaves)


def test_proof_of_an_unknown_account_is_a_key_error() -> None:
    tree = StandardMerkleTree.of([("0x" + "11" * 20, 1)])
    with pytest.raises(KeyError, match="has no leaf"):
        tree.proof("0x" + "22" * 20)


@pytest.mark.slow
def test_a_tree_of_100000_accounts_proves_every_sampled_leaf() -> None:
    """Its build time is a benchmark figure (`make bench ONLY=payouts`, tree_build_s_100000), not a test."""
    leaves = [(f"0x{i:040x}", i * 1_000 + 1) for i in range(1, 100_001)]
    tree = StandardMerkleTree.of(leaves)
    for account, amount in leaves[::9_973]:
        proof = tree.proof(account)
        assert len(proof) in (16, 17)
        assert verify(tree.root, account, amount, proof)
    assert not verify(tree.root, leaves[0][0], leaves[0][1] + 1, tree.proof(leaves[0][0]))
