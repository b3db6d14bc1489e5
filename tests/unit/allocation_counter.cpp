// Counts every operator new of the unit-test binary, so a test can assert
// how work grows with input size by counting instead of timing
// (hostile_input_test.cpp: findings are linear in distinct pods).
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>

std::atomic<std::uint64_t> g_allocations{0};

void* operator new(std::size_t n) {
    g_allocations.fetch_add(1, std::memory_order_relaxed);
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
