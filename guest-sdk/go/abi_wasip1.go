//go:build wasip1

// The component model's canonical ABI for world aggregate (wit/aggregate.wit), written by hand
// with the standard library only. wit-component checks these core signatures when it turns the
// wasip1 module into a component:
//
//	init() -> i32                         return area: string ptr @0, len @4
//	decide(14 x i32) -> i32               state (ptr, len), then the command record flattened:
//	                                      command-id, command-type, payload, tenant-id,
//	                                      aggregate-id (ptr, len each), metadata (ptr, len)
//	                                      return area: result disc u8 @0; ok: list<event> ptr @4,
//	                                      len @8; err: decide-error disc u8 @4, string ptr @8, len @12
//	apply(i32 x 4) -> i32                 state (ptr, len), events (ptr, len)
//	                                      return area: result disc u8 @0, string ptr @4, len @8
//	cabi_realloc(old, old_size, align, new_size i32) -> i32   lowering of the host's arguments
//	cabi_realloc_adapter(same)            the WASI adapter's own allocations
//
// event (size 20, align 4): event-type ptr @0, len @4, schema-version u32 @8, payload ptr @12,
// len @16. tuple<string, string> (size 16): key ptr @0, len @4, value ptr @8, len @12.
//
// Memory: Go owns linear memory growth (the component is built with realloc_via_memory_grow
// off). Argument buffers come from the Go heap and are kept reachable until the export has lifted
// them; results stay reachable until the next export call (the host copies them out right after
// the call returns). Go's wasm GC does not move objects.
//
// GC: a collection started inside cabi_realloc would call WASI clock and poll imports, which the
// component model forbids while the host is lowering arguments ("cannot leave component
// instance"). So automatic GC is off except while an export body runs.

package aggregate

import (
	"runtime/debug"
	"unsafe"
)

// sbrk serves allocations made before the Go runtime is initialised: the WASI adapter allocates
// its stack and state through the main module's realloc during _initialize, before package
// initialisation, when make cannot be used yet. Needs -ldflags=-checklinkname=0.
//
//go:linkname sbrk runtime.sbrk
func sbrk(n uintptr) unsafe.Pointer

// adapterMonotonicClockSetPaused makes the WASI adapter answer clock reads from a cached value,
// so nothing inside cabi_realloc can call the clock import.
//
//go:wasmimport wasi_snapshot_preview1 adapter_monotonic_clock_set_paused
func adapterMonotonicClockSetPaused(paused bool)

var (
	ready   bool       // package initialised: make works
	argPins [][]uint64 // argument buffers handed out by cabi_realloc since the last export
	retPins []any      // what the last export's results point into
	retArea [4]uint32
)

func init() {
	debug.SetGCPercent(-1)
	ready = true
}

//go:wasmexport cabi_realloc
func cabiRealloc(oldPtr, oldSize, align, newSize uint32) uint32 {
	if newSize == 0 {
		return align
	}
	if !ready {
		return early(align, newSize)
	}
	adapterMonotonicClockSetPaused(true)
	buf := make([]uint64, (newSize+7)/8) // 8-byte aligned, enough for any canonical ABI type
	p := unsafe.Pointer(&buf[0])
	if oldPtr != 0 && oldSize != 0 {
		copy(unsafe.Slice((*byte)(p), newSize), unsafe.Slice((*byte)(addr(oldPtr)), min(oldSize, newSize)))
	}
	argPins = append(argPins, buf)
	adapterMonotonicClockSetPaused(false)
	return uint32(uintptr(p))
}

// cabiReallocAdapter serves the WASI adapter's allocations (its stack and state), which live as
// long as the instance: from sbrk, outside the Go heap.
//
//go:wasmexport cabi_realloc_adapter
func cabiReallocAdapter(oldPtr, oldSize, align, newSize uint32) uint32 {
	if newSize == 0 {
		return align
	}
	p := early(align, newSize)
	if oldPtr != 0 && oldSize != 0 {
		copy(unsafe.Slice((*byte)(addr(p)), newSize), unsafe.Slice((*byte)(addr(oldPtr)), min(oldSize, newSize)))
	}
	return p
}

func early(align, size uint32) uint32 {
	p := uintptr(sbrk(uintptr(size + align)))
	if p == 0 {
		panic("aggregate: out of memory")
	}
	a := uintptr(align)
	return uint32((p + a - 1) &^ (a - 1))
}

//go:wasmexport init
func exportInit() uint32 {
	begin()
	defer end()
	s := handler().InitJSON()
	retArea[0], retArea[1] = lowerString(s)
	return retAddr()
}

//go:wasmexport decide
func exportDecide(stateP, stateN, idP, idN, typeP, typeN, payloadP, payloadN, tenantP, tenantN, aggregateP, aggregateN, metaP, metaN uint32) uint32 {
	begin()
	defer end()
	state := liftString(stateP, stateN)
	c := Command{
		ID:          liftString(idP, idN),
		Type:        liftString(typeP, typeN),
		Payload:     liftBytes(payloadP, payloadN),
		TenantID:    liftString(tenantP, tenantN),
		AggregateID: liftString(aggregateP, aggregateN),
	}
	if metaN > 0 {
		w := unsafe.Slice((*uint32)(addr(metaP)), 4*metaN)
		c.Metadata = make(map[string]string, metaN)
		for i := uint32(0); i < metaN; i++ {
			c.Metadata[liftString(w[4*i], w[4*i+1])] = liftString(w[4*i+2], w[4*i+3])
		}
	}
	argPins = nil // lifted values now keep their buffers alive

	events, err := handler().DecideJSON(state, c)
	if err != nil {
		e := AsError(err)
		retArea[0] = 1
		retArea[1] = 0
		if e.Kind == KindInvalid {
			retArea[1] = 1
		}
		retArea[2], retArea[3] = lowerString(e.Message)
		return retAddr()
	}
	list := make([]uint32, 5*len(events)+1) // +1: a valid address even for no events
	for i, ev := range events {
		w := list[5*i:]
		w[0], w[1] = lowerString(ev.Type)
		w[2] = ev.SchemaVersion
		w[3], w[4] = lowerBytes(ev.Payload)
	}
	retPins = append(retPins, list)
	retArea[0] = 0
	retArea[1] = uint32(uintptr(unsafe.Pointer(&list[0])))
	retArea[2] = uint32(len(events))
	return retAddr()
}

//go:wasmexport apply
func exportApply(stateP, stateN, eventsP, eventsN uint32) uint32 {
	begin()
	defer end()
	state := liftString(stateP, stateN)
	events := make([]Event, eventsN)
	if eventsN > 0 {
		w := unsafe.Slice((*uint32)(addr(eventsP)), 5*eventsN)
		for i := range events {
			events[i] = Event{
				Type:          liftString(w[5*i], w[5*i+1]),
				SchemaVersion: w[5*i+2],
				Payload:       liftBytes(w[5*i+3], w[5*i+4]),
			}
		}
	}
	argPins = nil

	next, err := handler().ApplyJSON(state, events)
	if err != nil {
		retArea[0] = 1
		retArea[1], retArea[2] = lowerString(err.Error())
		return retAddr()
	}
	retArea[0] = 0
	retArea[1], retArea[2] = lowerString(next)
	return retAddr()
}

// begin runs first in every export: GC on, the previous call's results released.
func begin() {
	debug.SetGCPercent(100)
	clear(retPins)
	retPins = retPins[:0]
}

// end runs last in every export: GC off again (this waits for a collection in progress).
func end() {
	debug.SetGCPercent(-1)
}

func handler() codec {
	if registered == nil {
		panic("aggregate: no aggregate registered; call aggregate.Register from an init function of package main")
	}
	return registered
}

func addr(p uint32) unsafe.Pointer {
	return unsafe.Add(unsafe.Pointer(nil), uintptr(p))
}

func liftString(p, n uint32) string {
	if n == 0 {
		return ""
	}
	return unsafe.String((*byte)(addr(p)), n)
}

func liftBytes(p, n uint32) []byte {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(addr(p)), n)
}

func lowerString(s string) (uint32, uint32) {
	if len(s) == 0 {
		return 0, 0
	}
	retPins = append(retPins, s)
	return uint32(uintptr(unsafe.Pointer(unsafe.StringData(s)))), uint32(len(s))
}

func lowerBytes(b []byte) (uint32, uint32) {
	if len(b) == 0 {
		return 0, 0
	}
	retPins = append(retPins, b)
	return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(b)))), uint32(len(b))
}

func retAddr() uint32 { return uint32(uintptr(unsafe.Pointer(&retArea[0]))) }
