"""OpenZeppelin StandardMerkleTree for (address, uint256) leaves, in pure Python.

Byte-for-byte the tree that `@openzeppelin/merkle-tree` builds with
`StandardMerkleTree.of(values, ["address", "uint256"])`, so its root, proofs and `dump()` can be
checked by standard tooling and by `DatacoopMarket.claim`:

- leaf = keccak256(keccak256(abi.encode(account, cumulative_units)))   (double hash)
- leaves sorted by hash (bytewise), placed at the end of the array in reverse order
- node i has children 2i+1 and 2i+2; a parent is keccak256 of its two children sorted bytewise
- a proof is the list of siblings from the leaf up to (not including) the root

Accounts are kept as lowercase 0x-hex (the leaf only sees the 20 bytes); one leaf per account, since
the distributor pays `cumulative - already claimed` per account. Amounts are integer base units.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from Crypto.Hash import keccak

LEAF_ENCODING = ("address", "uint256")
_UINT256_MAX = 2**256 - 1


def _units(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"cumulative amount must be an int in base units, got {value!r}")
    return value


def keccak256(data: bytes) -> bytes:
    return keccak.new(data=data, digest_bits=256).digest()


def normalize_address(account: str) -> str:
    """Lowercase 0x-hex; raises ValueError for anything that is not 20 bytes of hex."""
    text = account.lower()
    if not text.startswith("0x") or len(text) != 42:
        raise ValueError(f"account {account!r} is not a 0x-prefixed 20-byte hex address")
    try:
        bytes.fromhex(text[2:])
    except ValueError as exc:
        raise ValueError(f"account {account!r} is not hex") from exc
    return text


def leaf_hash(account: str, cumulative_units: int) -> bytes:
    """keccak256(bytes.concat(keccak256(abi.encode(account, cumulative_units)))), as the contract computes."""
    if not 0 <= cumulative_units <= _UINT256_MAX:
        raise ValueError(f"cumulative amount {cumulative_units} is outside uint256")
    encoded = bytes(12) + bytes.fromhex(normalize_address(account)[2:]) + cumulative_units.to_bytes(32, "big")
    return keccak256(keccak256(encoded))


def node_hash(a: bytes, b: bytes) -> bytes:
    return keccak256(a + b if a < b else b + a)


def process_proof(leaf: bytes, proof: Sequence[bytes]) -> bytes:
    node = leaf
    for sibling in proof:
        node = node_hash(node, sibling)
    return node


def verify(root: bytes, account: str, cumulative_units: int, proof: Sequence[bytes]) -> bool:
    """True when (account, cumulative_units) is a leaf of the tree with this root."""
    return process_proof(leaf_hash(account, cumulative_units), proof) == root


@dataclass(frozen=True)
class StandardMerkleTree:
    """An immutable payout tree; build it with `StandardMerkleTree.of`."""

    tree: tuple[bytes, ...] = field(repr=False)
    values: tuple[tuple[str, int], ...] = field(repr=False)
    tree_index: tuple[int, ...] = field(repr=False)
    """tree_index[i] is where values[i]'s leaf sits in `tree`."""
    _index_of_account: dict[str, int] = field(repr=False, compare=False)

    @classmethod
    def of(cls, leaves: Iterable[tuple[str, int]]) -> StandardMerkleTree:
        """Build from (account, cumulative_units) pairs.

        Raises ValueError on an empty set or a repeated account, TypeError on a non-int amount.
        """
        values = tuple((normalize_address(account), _units(units)) for account, units in leaves)
        if not values:
            raise ValueError("a payout tree needs at least one leaf")
        index_of_account = {account: i for i, (account, _) in enumerate(values)}
        if len(index_of_account) != len(values):
            raise ValueError("each account may appear once; sum its earnings into one cumulative amount")
        hashes = [leaf_hash(account, units) for account, units in values]
        order = sorted(range(len(values)), key=hashes.__getitem__)
        size = 2 * len(values) - 1
        tree: list[bytes] = [b""] * size
        tree_index = [0] * len(values)
        for position, value_index in enumerate(order):
            tree[size - 1 - position] = hashes[value_index]
            tree_index[value_index] = size - 1 - position
        for i in range(size - 1 - len(values), -1, -1):
            left, right = tree[2 * i + 1], tree[2 * i + 2]
            tree[i] = keccak256(left + right if left < right else right + left)
        return cls(tuple(tree), values, tuple(tree_index), index_of_account)

    @property
    def root(self) -> bytes:
        return self.tree[0]

    @property
    def root_hex(self) -> str:
        return "0x" + self.tree[0].hex()

    @property
    def total_units(self) -> int:
        """Sum of every leaf's cumulative amount: what `postRoot` declares as totalCumulative."""
        return sum(units for _, units in self.values)

    def cumulative_of(self, account: str) -> int:
        return self.values[self._index(account)][1]

    def proof(self, account: str) -> list[bytes]:
        """Siblings from the account's leaf up to the root; raises KeyError for an account not in the tree."""
        index = self.tree_index[self._index(account)]
        proof: list[bytes] = []
        while index > 0:
            proof.append(self.tree[index - 1 if index % 2 == 0 else index + 1])
            index = (index - 1) // 2
        return proof

    def dump(self) -> dict[str, Any]:
        """The JSON of `StandardMerkleTree.dump()` ("standard-v1"), loadable by OpenZeppelin's library."""
        return {
            "format": "standard-v1",
            "leafEncoding": list(LEAF_ENCODING),
            "tree": ["0x" + node.hex() for node in self.tree],
            "values": [
                {"value": [account, str(units)], "treeIndex": self.tree_index[i]}
                for i, (account, units) in enumerate(self.values)
            ],
        }

    def _index(self, account: str) -> int:
        try:
            return self._index_of_account[normalize_address(account)]
        except KeyError:
            raise KeyError(f"account {account} has no leaf in this tree") from None
