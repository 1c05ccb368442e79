"""Math: Metamath's set.mm (formal proofs of set theory, CC0) from the Debian package `metamath-databases`.

The file is 41 MB; its opening change log is skipped and only the first 13 MB are read, from which a 4 MB spread of
chunks (cut before `$(` comments, i.e. theorem boundaries) is kept. Where apt is unavailable the subnet is skipped.

Shifted set: `hol.mm` from the same package, another database (higher-order logic, another author) written in the
same language. (`iset.mm` and `nf.mm` were rejected: they copy whole sections of set.mm verbatim.) Its typesetting
section (`$t`: HTML and LaTeX markup, not Metamath) is cut off, as set.mm's is never read for training either.
"""

from __future__ import annotations

from moe.corpus import DebSource, Subnet

SUBNET = Subnet(
    name="math",
    netuid=3,
    description="Metamath set.mm: axioms, definitions and machine-checked proofs of ZFC set theory",
    source=DebSource(
        package="metamath-databases",
        version="0.0.0~20210101.git55fe226-2",
        sha256="c72523c221db6c1039fa909150f9c53fb9175809792f2e80e55e1baa965445a1",
        member="usr/share/metamath/databases/set.mm",
        read_bytes=13_000_000,
        skip_to="$( Declare the primitive constant symbols for propositional calculus. $)",
        license="CC0-1.0",
        boundary=r"\s*\$\(",
    ),
    max_bytes=4_000_000,
    shifted=DebSource(
        package="metamath-databases",
        version="0.0.0~20210101.git55fe226-2",
        sha256="c72523c221db6c1039fa909150f9c53fb9175809792f2e80e55e1baa965445a1",
        member="usr/share/metamath/databases/hol.mm",
        stop_at="$( $t",
        license="CC0-1.0",
        boundary=r"\s*\$\(",
    ),
)
