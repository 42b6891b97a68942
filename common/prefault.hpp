// Makes memory resident before a latency-sensitive path writes it. A page fault per 4 KiB
// costs 0.1-0.5 us on bare metal and was measured at 8-11 us on a paravirtualized (PVM)
// guest, where MADV_POPULATE_WRITE filled the same pages at about 1 us each: one system
// call, no exception per page.
#pragma once

#include <cstddef>

namespace understudy {

// Faults in, for writing, the whole pages inside [begin, begin + bytes) of private
// anonymous memory the caller owns; the partial pages at either end are left to fault
// on first use. Contents are unchanged. MADV_POPULATE_WRITE (Linux 5.14) where the
// kernel has it; otherwise a write of each page's first byte with its own value. Where
// memory is short it does nothing, and the pages fault when first used.
void prefault_for_write(void* begin, size_t bytes);

} // namespace understudy
