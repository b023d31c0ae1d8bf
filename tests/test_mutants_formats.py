"""formats/ behaviours that a uniform sample of the package's mutants showed no test looked at
(docs/reliability.md, Mutation testing). The expected texts are those libtraceevent 1.8.2 printed
for the same bytes in tests/test_printeval.py (AGREED); a ``__rel_loc`` field holds the same data as a
``__data_loc`` one, its offset counted from the end of the field (include/trace/stages/stage6_event_callback.h:
``__get_rel_dynamic_array``), and prints the same.
"""

from __future__ import annotations

from pathlib import Path

from test_printeval import render

MASK = "0f0b000000000000"  # bits 0-3, 8-9, 11 of one unsigned long
PRINTED = "00000000,00000b0f|0-3,8-9,11"  # what libtraceevent prints for it (AGREED, __data_loc)


def test_rel_loc_bitmask_and_cpumask_print_as_their_data_loc_forms() -> None:
    data_loc = render([("__data_loc unsigned long[] mask", 8, 4, 0)],
                      '"%s|%s", __get_bitmask(mask), __get_cpumask(mask)', bytes.fromhex("0c000800" + MASK))
    rel_loc = render([("__rel_loc unsigned long[] mask", 8, 4, 0)],
                     '"%s|%s", __get_rel_bitmask(mask), __get_rel_cpumask(mask)',
                     bytes.fromhex("00000800" + MASK))  # offset 0 from the field's end (12), 8 bytes
    assert data_loc == PRINTED
    assert rel_loc == PRINTED


def test_negative_star_width_left_justifies() -> None:
    """``%*d`` with a negative width argument: "a negative field width is taken as a - flag followed
    by a positive field width" (C11 7.21.6.1p5; glibc and the kernel's vsnprintf alike)."""
    fields = [("int w", 8, 4, 1), ("int x", 12, 4, 1)]
    assert render(fields, '"[%*d]", REC->w, REC->x', bytes.fromhex("fbffffff" "2a000000")) == "[42   ]"
    assert render(fields, '"[%*d]", REC->w, REC->x', bytes.fromhex("05000000" "2a000000")) == "[   42]"


def test_columns_past_arrow_offsets_are_cut_into_chunks_that_hold_the_same_values(monkeypatch) -> None:
    """A string/binary/list column whose data passes Arrow's 32-bit offsets (2 GiB) is built in chunks
    (decode.var_array). With the bound lowered to 64 bytes, the real mixed trace (comm strings,
    exec file names, byte arrays) and the 6.18 all-events capture read to the same tables."""
    from vpmutrace.formats import decode
    from vpmutrace.readers import load_trace

    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    split = []  # columns the lowered bound cut into several chunks
    var_array = decode.var_array

    def spy(typ, value_offsets, values):  # type: ignore[no-untyped-def]
        out = var_array(typ, value_offsets, values)
        split.append(getattr(out, "num_chunks", 1))
        return out

    for name in ("mixed.trace.dat", "allevents.trace.dat"):
        whole = load_trace([fixtures / name])
        with monkeypatch.context() as m:
            m.setattr(decode, "ARROW_MAX_OFFSET", 64)
            m.setattr(decode, "var_array", spy)
            chunked = load_trace([fixtures / name])
        tables = sorted(whole.tables)
        assert tables == sorted(chunked.tables) and len(tables) > 20
        for t in tables:
            assert whole.df(t).equals(chunked.df(t)), (name, t)
    assert max(split) > 2, split


def test_sockaddr_behind_get_sockaddr_prints_as_a_sockaddr_field() -> None:
    """``%pISpc`` of ``__get_sockaddr(addr)`` (the kernel's __sockaddr(): a __data_loc array, as in
    sunrpc's events) prints the sockaddr as the same bytes in a fixed field print (AGREED: what
    libtraceevent printed for REC->s / REC->s6)."""
    v4 = "020046a07f000001" + "00" * 8  # AF_INET, port 18080, 127.0.0.1 (struct sockaddr_in, 16 bytes)
    v6 = "0a0046a6" + "00" * 4 + "00" * 15 + "01" + "00" * 4  # AF_INET6, port 18086, ::1 (sockaddr_in6, 28)
    fields = [("__data_loc u8[] a", 8, 4, 0), ("__data_loc u8[] b", 12, 4, 0)]
    payload = bytes.fromhex("10001000" + "20001c00" + v4 + v6)  # a at 16 (16 bytes), b at 32 (28 bytes)
    printed = render(fields, '"%pISpc %pISpc %pISc", __get_sockaddr(a), __get_sockaddr(b), __get_sockaddr(b)',
                     payload)
    assert printed == "127.0.0.1:18080 [::1]:18086 ::1"


def test_an_element_of_a_dynamic_array_is_read_at_its_type_s_size() -> None:
    """``__get_dynamic_array(a)[i]`` as libtraceevent evaluates it (event-parse.c, eval_num_arg, op "["
    on a TEP_PRINT_DYNAMIC_ARRAY): the number at byte i of the array's data, read at the array's element
    size; the kernel's ``__u8``/``__u16`` are the types ``u8``/``u16`` (include/uapi/asm-generic/int-ll64.h)."""
    fields = [("__data_loc __u8[] a", 8, 4, 0), ("__data_loc u8[] b", 12, 4, 0), ("__data_loc __u16[] c", 16, 4, 0)]
    payload = bytes.fromhex("14000400" "18000400" "1c000400" "01020304" "01020304" "01020304")
    printed = render(fields, '"%d %d %d", __get_dynamic_array(a)[2], __get_dynamic_array(b)[2], '
                             '__get_dynamic_array(c)[1]', payload)
    assert printed == f"3 3 {0x0302}"  # c: bytes 1..2 (02 03), little-endian


def test_an_array_field_read_as_a_number_is_its_bytes_when_they_make_one() -> None:
    """An array field as a number (libtraceevent: tep_read_number at the field's size, which reads 1,
    2, 4 or 8 bytes and gives 0 for any other size)."""
    fields = [("u8 a[1]", 8, 1, 0), ("u8 b[2]", 9, 2, 0), ("u8 c[3]", 11, 3, 0)]
    assert render(fields, '"%d %d %d", REC->a, REC->b, REC->c', bytes.fromhex("07" "0102" "010203")) == \
        f"7 {0x0201} 0"
