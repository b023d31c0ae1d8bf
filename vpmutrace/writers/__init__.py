"""Writers: trace files vpmutrace produces (trace.dat from tracefs captures)."""
