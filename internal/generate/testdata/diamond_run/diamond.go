// Package diamond is a diamond: two steps depend on the first, the last on
// both; some handlers take the run input.
package diamond

import "context"

// Order is the flow's input.
//
//pgflow:flow process_order
type Order struct {
	ID    string `json:"id"`
	Items int    `json:"items"`
}

// Stock is a stock check.
type Stock struct {
	Available bool `json:"available"`
}

// Price is a price.
type Price struct {
	Cents int64 `json:"cents"`
}

// Receipt is the result.
type Receipt struct {
	OrderID string `json:"order_id"`
	Cents   int64  `json:"cents"`
}

// Validate comes first.
//
//pgflow:step validate
func Validate(ctx context.Context, o Order) (bool, error) { return o.Items > 0, nil }

// CheckStock depends on validate and takes no run input.
//
//pgflow:step check_stock deps=validate
func CheckStock(ctx context.Context, valid bool) (Stock, error) {
	return Stock{Available: valid}, nil
}

// PriceOrder depends on validate and takes the run input.
//
//pgflow:step price deps=validate
func PriceOrder(ctx context.Context, o Order, valid bool) (Price, error) {
	return Price{Cents: int64(o.Items) * 100}, nil
}

// Finish joins both branches; its parameters follow deps= order, which is
// not the order of the steps.
//
//pgflow:step finish deps=price,check_stock
func Finish(ctx context.Context, o Order, p Price, s Stock) (Receipt, error) {
	return Receipt{OrderID: o.ID, Cents: p.Cents}, nil
}
