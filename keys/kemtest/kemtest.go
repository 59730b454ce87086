// Package kemtest provides deterministic ML-KEM-768 encapsulation to a
// keys.KEMPublic. It exists only for known-answer vectors and
// deterministic tests: encapsulating with chosen randomness destroys the
// security of the shared key, so production code must never import this
// package (internal/importgraph enforces that; only test files, other
// test-support packages and packages under an internal/ directory may).
package kemtest

import (
	"crypto/mlkem"
	"crypto/mlkem/mlkemtest"
	"fmt"

	"github.com/sotto-im/sotto/keys"
)

// Encapsulate is keys.KEMPublic.Encapsulate with the 32 bytes of
// randomness given explicitly (ML-KEM.Encaps_internal of FIPS 203). It
// returns an error wrapping keys.ErrKEMInvalid if pk is not a valid
// encapsulation key, and an error if random is not 32 bytes long.
func Encapsulate(pk keys.KEMPublic, random []byte) (sharedKey, ciphertext []byte, err error) {
	ek, err := mlkem.NewEncapsulationKey768(pk.Bytes())
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", keys.ErrKEMInvalid, err)
	}
	sharedKey, ciphertext, err = mlkemtest.Encapsulate768(ek, random)
	if err != nil {
		return nil, nil, fmt.Errorf("kemtest: deterministic ML-KEM encapsulation: %w", err)
	}
	return sharedKey, ciphertext, nil
}
