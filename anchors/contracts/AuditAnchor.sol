// SPDX-License-Identifier: UNLICENSED
pragma solidity ^0.8.24;

/// @title AuditAnchor: append-only anchor of AgentKeys Broker ledger batches.
/// @notice Each batch covers the contiguous ledger seqs `firstSeq..lastSeq` and stores
///   - `root`: the RFC 6962 / RFC 9162 Merkle tree hash over the batch's record hashes in seq order
///     (leaf = SHA-256(0x00 || recordHash), node = SHA-256(0x01 || left || right));
///   - `chainHead`: the record hash at `lastSeq`, which commits to the whole chain prefix;
///   - `blockNumber`: the block the batch was anchored in.
/// Batches are contiguous (`firstSeq` = previous `lastSeq` + 1, the first one starts at `startSeq`)
/// and append-only: no function changes or deletes a batch. A root can be anchored once only, so a
/// lookup by root is unique.
///
/// Migration: a new contract deployed with `startSeq = old.lastSeq() + 1` continues the sequence; the
/// old contract's owner may then `setSubmitter(address(0))` to freeze it.
///
/// Storage layout (gas): the public `Batch` struct is assembled from three slots per batch: the root
/// and the chain head keyed by batch index, and one packed word keyed by root
/// (index+1 | firstSeq << 64 | lastSeq << 128 | blockNumber << 192). The submitter, the last seq and
/// the batch count share one slot, so `anchor()` writes three fresh slots and updates one warm slot.
contract AuditAnchor {
    struct Batch {
        bytes32 root;
        uint64 firstSeq;
        uint64 lastSeq;
        bytes32 chainHead;
        uint64 blockNumber;
    }

    struct Hashes {
        bytes32 root;
        bytes32 chainHead;
    }

    error NotOwner();
    error NotSubmitter();
    error NotContiguous(uint64 expectedFirst, uint64 got);
    error InvalidRange(uint64 firstSeq, uint64 lastSeq);
    error ZeroRoot();
    error RootAlreadyAnchored(bytes32 root, uint256 batchIndex);
    error ZeroAddress();
    error InvalidStartSeq();
    error BatchNotFound(uint256 index);
    error RootNotAnchored(bytes32 root);
    error SeqNotAnchored(uint64 seq);

    event Anchored(
        uint256 indexed batchIndex,
        bytes32 indexed root,
        uint64 firstSeq,
        uint64 lastSeq,
        bytes32 chainHead
    );
    event SubmitterChanged(address indexed previous, address indexed next);
    event OwnershipTransferred(address indexed previous, address indexed next);

    /// @notice May change the submitter and transfer ownership.
    address public owner;
    /// @notice The only address allowed to anchor (address(0): anchoring frozen).
    address public submitter;
    uint64 private _lastSeq; // packed with `submitter`
    uint32 private _count; // packed with `submitter`

    /// @notice The first seq this contract anchors (1 for a fresh ledger, old lastSeq + 1 after a migration).
    uint64 public immutable startSeq;

    mapping(uint256 => Hashes) private _hashes;
    mapping(bytes32 => uint256) private _meta;

    uint256 private constant MASK64 = 0xffffffffffffffff;

    constructor(address submitter_, uint64 startSeq_) {
        if (startSeq_ == 0) revert InvalidStartSeq();
        if (submitter_ == address(0)) revert ZeroAddress();
        owner = msg.sender;
        submitter = submitter_;
        startSeq = startSeq_;
        _lastSeq = startSeq_ - 1;
        emit OwnershipTransferred(address(0), msg.sender);
        emit SubmitterChanged(address(0), submitter_);
    }

    // ---------------------------------------------------------------- writes

    /// @notice Anchor the batch `firstSeq..lastSeq` with Merkle root `root` and chain head `chainHead`.
    /// @dev Reverts NotSubmitter, ZeroRoot, NotContiguous(expected, got), InvalidRange, RootAlreadyAnchored.
    /// (`lastSeq_` carries a trailing underscore only because `lastSeq()` names the contract's view.)
    function anchor(bytes32 root, uint64 firstSeq, uint64 lastSeq_, bytes32 chainHead) external {
        if (msg.sender != submitter) revert NotSubmitter();
        if (root == bytes32(0)) revert ZeroRoot();
        uint64 expected = _lastSeq + 1;
        if (firstSeq != expected) revert NotContiguous(expected, firstSeq);
        if (lastSeq_ < firstSeq) revert InvalidRange(firstSeq, lastSeq_);
        uint256 existing = _meta[root];
        if (existing != 0) revert RootAlreadyAnchored(root, (existing & MASK64) - 1);

        uint32 index = _count;
        _hashes[index] = Hashes(root, chainHead);
        _meta[root] = (uint256(index) + 1) | (uint256(firstSeq) << 64) | (uint256(lastSeq_) << 128)
            | (uint256(uint64(block.number)) << 192);
        _lastSeq = lastSeq_;
        _count = index + 1;
        emit Anchored(index, root, firstSeq, lastSeq_, chainHead);
    }

    /// @notice Change the submitter (address(0) freezes anchoring, e.g. after a migration).
    function setSubmitter(address next) external {
        if (msg.sender != owner) revert NotOwner();
        emit SubmitterChanged(submitter, next);
        submitter = next;
    }

    function transferOwnership(address next) external {
        if (msg.sender != owner) revert NotOwner();
        if (next == address(0)) revert ZeroAddress();
        emit OwnershipTransferred(owner, next);
        owner = next;
    }

    // ---------------------------------------------------------------- views

    /// @notice The last anchored seq (`startSeq - 1` before the first batch).
    function lastSeq() external view returns (uint64) {
        return _lastSeq;
    }

    function batchCount() external view returns (uint256) {
        return _count;
    }

    /// @notice Batch index + 1 for an anchored root, 0 if the root is not anchored.
    function batchIndexByRoot(bytes32 root) external view returns (uint256) {
        return _meta[root] & MASK64;
    }

    /// @notice The batch at `index`; reverts BatchNotFound(index) if `index >= batchCount()`.
    function batchAt(uint256 index) external view returns (Batch memory) {
        if (index >= _count) revert BatchNotFound(index);
        return _batch(index);
    }

    /// @notice The batch anchored with `root`; reverts RootNotAnchored(root) if there is none.
    function batchByRoot(bytes32 root) external view returns (Batch memory) {
        uint256 m = _meta[root];
        if (m == 0) revert RootNotAnchored(root);
        return _unpack(root, m);
    }

    /// @notice The batch holding `seq` (binary search on lastSeq); reverts SeqNotAnchored(seq) if
    /// `seq < startSeq` or `seq > lastSeq()`.
    function batchForSeq(uint64 seq) public view returns (uint256 index, Batch memory batch) {
        (bool found, uint256 i) = _findSeq(seq);
        if (!found) revert SeqNotAnchored(seq);
        return (i, _batch(i));
    }

    /// @notice RFC 9162 §2.1.3.2: does `proof` show `leafHash` at `index` of a tree of `treeSize`
    /// leaves with root `root`? `leafHash` = SHA-256(0x00 || record hash). Never reverts: an index
    /// outside the tree, a proof of the wrong length, or a wrong root all return false.
    function verifyInclusion(
        bytes32 leafHash,
        uint256 index,
        uint256 treeSize,
        bytes32[] calldata proof,
        bytes32 root
    ) public pure returns (bool) {
        if (index >= treeSize) return false;
        uint256 fn = index;
        uint256 sn = treeSize - 1;
        bytes32 r = leafHash;
        for (uint256 i = 0; i < proof.length; ++i) {
            if (sn == 0) return false;
            bytes32 p = proof[i];
            if (fn & 1 == 1 || fn == sn) {
                r = sha256(abi.encodePacked(bytes1(0x01), p, r));
                while (fn & 1 == 0 && fn != 0) {
                    fn >>= 1;
                    sn >>= 1;
                }
            } else {
                r = sha256(abi.encodePacked(bytes1(0x01), r, p));
            }
            fn >>= 1;
            sn >>= 1;
        }
        return sn == 0 && r == root;
    }

    /// @notice Is `recordHash` the record at `seq`, per an inclusion proof against the root of the
    /// anchored batch holding `seq`? Returns false (never reverts) if `seq` is not anchored here.
    function verifyRecord(bytes32 recordHash, uint64 seq, bytes32[] calldata proof) external view returns (bool) {
        (bool found, uint256 i) = _findSeq(seq);
        if (!found) return false;
        bytes32 root = _hashes[i].root;
        uint256 m = _meta[root];
        uint64 first = uint64(m >> 64);
        uint64 last = uint64(m >> 128);
        bytes32 leaf = sha256(abi.encodePacked(bytes1(0x00), recordHash));
        return verifyInclusion(leaf, seq - first, uint256(last - first) + 1, proof, root);
    }

    // ---------------------------------------------------------------- internals

    function _findSeq(uint64 seq) private view returns (bool, uint256) {
        uint256 count = _count;
        if (count == 0 || seq < startSeq || seq > _lastSeq) return (false, 0);
        uint256 lo = 0;
        uint256 hi = count - 1;
        while (lo < hi) {
            uint256 mid = (lo + hi) >> 1;
            if (uint64(_meta[_hashes[mid].root] >> 128) < seq) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        return (true, lo);
    }

    function _batch(uint256 index) private view returns (Batch memory) {
        bytes32 root = _hashes[index].root;
        return _unpack(root, _meta[root]);
    }

    function _unpack(bytes32 root, uint256 m) private view returns (Batch memory b) {
        b.root = root;
        b.firstSeq = uint64(m >> 64);
        b.lastSeq = uint64(m >> 128);
        b.chainHead = _hashes[(m & MASK64) - 1].chainHead;
        b.blockNumber = uint64(m >> 192);
    }
}
