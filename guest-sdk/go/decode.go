package aggregate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
)

// Decode decodes the command's JSON-object payload into v, a pointer to a struct (or any other
// type encoding/json accepts). Every error is Invalid and names the command type, and the field
// where there is one:
//
//	invalid `deposit` command: missing field `amount`
//	invalid `deposit` command: invalid type for field `amount`: got string, expected int64
//	payload of `deposit` command must be a JSON object
//	payload of `deposit` command is not JSON: invalid character 'x' looking for beginning of value
//
// A struct field is required unless it is a pointer or an interface, or its json tag has
// omitempty or omitzero; a required field must be present and not null. The check goes into
// nested structs, pointers to structs and slices of structs. Unknown fields are ignored. (A
// field that is already non-zero in v before Decode counts as present: that is how to give a
// default.)
func (c Command) Decode(v any) error {
	payload := bytes.TrimSpace(c.Payload)
	if len(payload) == 0 || payload[0] != '{' {
		if len(payload) == 0 || !json.Valid(payload) {
			var x any
			return Invalidf("payload of `%s` command is not JSON: %v", c.Type, describe(json.Unmarshal(payload, &x)))
		}
		return Invalidf("payload of `%s` command must be a JSON object", c.Type)
	}
	if err := json.Unmarshal(payload, v); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return Invalidf("payload of `%s` command is not JSON: %v", c.Type, err)
		}
		return Invalidf("invalid `%s` command: %s", c.Type, describe(err))
	}
	if msg := missing(reflect.ValueOf(v), func() json.RawMessage { return payload }, ""); msg != "" {
		return Invalidf("invalid `%s` command: %s", c.Type, msg)
	}
	return nil
}

// describe rewords encoding/json errors to name the field in the payload.
func describe(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field == "" {
			return fmt.Sprintf("invalid type: got %s, expected %s", te.Value, te.Type)
		}
		return fmt.Sprintf("invalid type for field `%s`: got %s, expected %s", fieldPath(te.Field), te.Value, te.Type)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// fieldPath writes encoding/json's "lines.0.qty" as "lines[0].qty".
func fieldPath(p string) string {
	var b strings.Builder
	for i, part := range strings.Split(p, ".") {
		if _, err := strconv.Atoi(part); err == nil && i > 0 {
			b.WriteString("[" + part + "]")
			continue
		}
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(part)
	}
	return b.String()
}

func isObject(b []byte) bool {
	b = bytes.TrimSpace(b)
	return len(b) > 0 && b[0] == '{'
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// missing returns a message for the first required field that is absent (or null) in the JSON
// that v was decoded from, or "". raw returns that JSON; it is parsed only when a required field
// decoded to its zero value (a non-zero field was certainly present), so a well-formed command
// costs no second parse.
func missing(v reflect.Value, raw func() json.RawMessage, path string) string {
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return ""
		}
		v = v.Elem()
	}
	if reflect.PointerTo(v.Type()).Implements(unmarshalerType) {
		return ""
	}
	switch v.Kind() {
	case reflect.Struct:
		var obj map[string]json.RawMessage
		parsed := false
		object := func() map[string]json.RawMessage {
			if !parsed {
				parsed = true
				_ = json.Unmarshal(raw(), &obj)
			}
			return obj
		}
		for _, f := range fieldsOf(v.Type()) {
			fv, err := v.FieldByIndexErr(f.index)
			if err != nil {
				continue // under a nil embedded pointer: absent, and such fields are optional
			}
			name := path + f.name
			if f.required && fv.IsZero() {
				value, ok := lookup(object(), f.name)
				if !ok {
					return fmt.Sprintf("missing field `%s`", name)
				}
				if string(value) == "null" {
					return fmt.Sprintf("field `%s` must not be null", name)
				}
			}
			if !hasStruct(f.typ) {
				continue
			}
			if !f.required && fv.IsZero() {
				if value, ok := lookup(object(), f.name); !ok || string(value) == "null" {
					continue // an absent optional field: nothing inside it to check
				}
			}
			child := func() json.RawMessage {
				value, _ := lookup(object(), f.name)
				return value
			}
			if msg := missing(fv, child, name+"."); msg != "" {
				return msg
			}
		}
	case reflect.Slice, reflect.Array:
		if !hasStruct(v.Type().Elem()) {
			return ""
		}
		var items []json.RawMessage
		parsed := false
		base := strings.TrimSuffix(path, ".")
		for i := range v.Len() {
			item := func() json.RawMessage {
				if !parsed {
					parsed = true
					_ = json.Unmarshal(raw(), &items)
				}
				if i < len(items) {
					return items[i]
				}
				return nil
			}
			if v.Index(i).IsZero() && item() == nil {
				continue // an array element the JSON did not have
			}
			if msg := missing(v.Index(i), item, base+"["+strconv.Itoa(i)+"]."); msg != "" {
				return msg
			}
		}
	}
	return ""
}

func hasStruct(t reflect.Type) bool {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
		t = t.Elem()
	}
	return t.Kind() == reflect.Struct
}

// lookup finds a key as encoding/json does: exact match first, then case-insensitive.
func lookup(obj map[string]json.RawMessage, name string) (json.RawMessage, bool) {
	if v, ok := obj[name]; ok {
		return v, true
	}
	for k, v := range obj {
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	return nil, false
}

type field struct {
	name     string
	index    []int
	typ      reflect.Type
	required bool
}

var fieldCache sync.Map // reflect.Type -> []field

// fieldsOf lists the JSON fields of struct type t as encoding/json sees them (exported, renamed by
// tag, "-" skipped, untagged embedded structs flattened), with whether each is required.
func fieldsOf(t reflect.Type) []field {
	if cached, ok := fieldCache.Load(t); ok {
		return cached.([]field)
	}
	var out []field
	for i := range t.NumField() {
		sf := t.Field(i)
		tag := sf.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		ft := sf.Type
		if sf.Anonymous && name == "" {
			et := ft
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				for _, f := range fieldsOf(et) {
					// Fields promoted through an embedded pointer are all optional.
					f.required = f.required && ft.Kind() != reflect.Pointer
					f.index = append([]int{i}, f.index...)
					out = append(out, f)
				}
				continue
			}
		}
		if !sf.IsExported() {
			continue
		}
		if name == "" {
			name = sf.Name
		}
		optional := ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Interface
		for _, o := range strings.Split(opts, ",") {
			optional = optional || o == "omitempty" || o == "omitzero"
		}
		out = append(out, field{name: name, index: []int{i}, typ: ft, required: !optional})
	}
	fieldCache.Store(t, out)
	return out
}
